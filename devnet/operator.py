"""Operator actions against a live chain and live services, shared by the CLI and the devnet.

Owns: reading an indexer's public identity from its ``/status`` (the public key is read there, never scraped
from logs), and ``ensure_indexer_registered``: write ``IndexerRegistry.setIndexer(endpoint, code id, public
key)`` only when the on-chain record differs (idempotent: a second run sends nothing and says so); and the
owner key's loading from the environment (``ATTESTMESH_OWNER_KEY``: never a command-line argument, never
echoed). Must not: hold a key beyond the call, print or log key material, or talk to anything but the URLs
it is given.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import structlog

from sidecar.chain.contracts import IndexerRegistryClient
from sidecar.chain.rpc import ChainConnection
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32, SecretBytes
from sidecar.core.model import IndexerRecord

log = structlog.get_logger("attestmesh.operator")

OWNER_KEY_VARIABLE: Final = "ATTESTMESH_OWNER_KEY"
STATUS_TIMEOUT: Final = 3.0


class OperatorError(RuntimeError):
    """An operator action could not be done; the message says why (never with key material)."""


@dataclass(frozen=True, slots=True)
class IndexerIdentity:
    """What an indexer says about itself on ``/status``: the three fields the registry holds."""

    public_key: Bytes32
    code_id: Bytes32 | None
    public_url: str | None
    key_version: int | None


@dataclass(frozen=True, slots=True)
class RegistryUpdate:
    """The outcome of ``ensure_indexer_registered``: the record now on chain and whether we sent a tx."""

    record: IndexerRecord
    changed: bool
    tx_hash: Bytes32 | None = None


def owner_signer(env: Mapping[str, str]) -> LocalSigner:
    """The cluster/registry owner's signer from ``ATTESTMESH_OWNER_KEY`` (0x-prefixed 32-byte hex)."""
    text = env.get(OWNER_KEY_VARIABLE, "").strip()
    if not text:
        raise OperatorError(f"{OWNER_KEY_VARIABLE} is not set (the owner's key is read from the environment)")
    try:
        raw = bytes.fromhex(text.removeprefix("0x").removeprefix("0X"))
    except ValueError:
        raise OperatorError(f"{OWNER_KEY_VARIABLE} is not hex") from None
    if len(raw) != 32:
        raise OperatorError(f"{OWNER_KEY_VARIABLE} must be 32 bytes of hex")
    try:
        return LocalSigner(SecretBytes(raw))
    except ValueError:
        raise OperatorError(f"{OWNER_KEY_VARIABLE} is not a valid secp256k1 private key") from None


def fetch_indexer_identity(status_url: str, timeout: float = STATUS_TIMEOUT) -> IndexerIdentity:
    """GET the indexer's ``/status`` and return its public key, code id and endpoint."""
    try:
        with urllib.request.urlopen(status_url, timeout=timeout) as response:  # noqa: S310 - operator URL
            body = response.read(1 << 20)
    except urllib.error.HTTPError as exc:
        raise OperatorError(f"{status_url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise OperatorError(f"{status_url} did not answer: {exc}") from None
    try:
        data = json.loads(body)
        key = data["public_key"]
    except (ValueError, KeyError, TypeError):
        raise OperatorError(f"{status_url} did not return an indexer status document") from None
    if not isinstance(key, str):
        raise OperatorError(f"{status_url}: the indexer has no signing key yet (still starting?)")
    try:
        public_key = Bytes32.from_hex(key)
        code_id = Bytes32.from_hex(data["code_id"]) if isinstance(data.get("code_id"), str) else None
    except ValueError:
        raise OperatorError(f"{status_url}: public key or code id is not 32 bytes of hex") from None
    url = data.get("public_url")
    version = data.get("key_version")
    return IndexerIdentity(
        public_key=public_key,
        code_id=code_id,
        public_url=url if isinstance(url, str) and url else None,
        key_version=version if isinstance(version, int) else None,
    )


async def ensure_indexer_registered(
    conn: ChainConnection,
    owner: TxSubmitter,
    registry: Address,
    *,
    endpoint: str,
    code_id: Bytes32,
    public_key: Bytes32,
) -> RegistryUpdate:
    """Make ``IndexerRegistry.current()`` equal (endpoint, code id, key); send a tx only when it differs."""
    if not endpoint.startswith(("ws://", "wss://")):
        raise OperatorError(f"indexer endpoint must be a ws:// or wss:// URL, got {endpoint!r}")
    client = IndexerRegistryClient(conn, registry, owner)
    current = await client.current()
    if current.endpoint == endpoint and current.code_id == code_id and current.pub_key == public_key:
        log.info("indexer.registration_unchanged", endpoint=endpoint, public_key=str(public_key))
        return RegistryUpdate(current, changed=False)
    receipt = await client.set_indexer(endpoint, code_id, public_key)
    record = await client.current()
    log.info(
        "indexer.registered",
        endpoint=endpoint,
        public_key=str(public_key),
        code_id=str(code_id),
        previous_public_key=str(current.pub_key) if current.registered else None,
        tx=str(receipt.tx_hash),
        block=receipt.block_number,
    )
    return RegistryUpdate(record, changed=True, tx_hash=receipt.tx_hash)
