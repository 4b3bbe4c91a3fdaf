"""Signed frames shared by every session: each log and each checkpoint of a cluster signed and encoded once.

Owns ``SignedFrames``: the indexer's signing key (built from its seed once) and a bounded cache of the JSON
text of every event and checkpoint a session asked for, keyed by what the frame's signature covers
(cluster, position and block hash, so a reorged block never reuses a frame of the old fork). The first
session that needs a frame signs it; every other session sends the very same string. Protocol v2 signs
nothing per session, which is what makes this sharing possible.

Must not: hold session state (a session's position, seq and acks are its own), or do I/O.
"""

from __future__ import annotations

import collections
from typing import Final

from sidecar.core.cursor import Cursor
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.indexerwire import IndexerKey, encode, sign_checkpoint, sign_event
from sidecar.core.model import ChainLog

#: Frames kept (each a few hundred bytes): a burst of logs and the checkpoints of every followed cluster.
FRAMES_KEPT: Final = 8192

_Key = tuple[str, bytes, int, int, bytes]


class SignedFrames:
    """Events and checkpoints signed once, kept as encoded text (see the module docstring)."""

    def __init__(self, seed: SecretBytes, limit: int = FRAMES_KEPT) -> None:
        self.key = IndexerKey(seed)
        self.limit = limit
        self.signed = 0  # signatures made (a cache hit makes none)
        self._frames: collections.OrderedDict[_Key, str] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._frames)

    def _get(self, key: _Key) -> str | None:
        text = self._frames.get(key)
        if text is not None:
            self._frames.move_to_end(key)
        return text

    def _put(self, key: _Key, text: str) -> str:
        self._frames[key] = text
        self.signed += 1
        while len(self._frames) > self.limit:
            self._frames.popitem(last=False)
        return text

    def event(self, cluster: Address, prev: Cursor, log: ChainLog) -> str:
        """The frame of the event for ``log`` (whose cluster log before it is at ``prev``)."""
        key = ("event", cluster.raw, log.block_number, log.log_index, log.block_hash.raw)
        text = self._get(key)
        if text is None:
            text = self._put(
                key, encode(sign_event(cluster=cluster, prev=prev, log=log, indexer_key=self.key))
            )
        return text

    def checkpoint(self, cluster: Address, prev: Cursor, block: int, block_hash: Bytes32) -> str:
        """The frame of the checkpoint through ``block``; ``prev``: the cluster's last log up to it."""
        key = ("checkpoint", cluster.raw, block, -1, block_hash.raw)
        text = self._get(key)
        if text is None:
            msg = sign_checkpoint(
                cluster=cluster, prev=prev, block=block, block_hash=block_hash, indexer_key=self.key
            )
            text = self._put(key, encode(msg))
        return text
