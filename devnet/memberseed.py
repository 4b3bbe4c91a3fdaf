"""TEST-ONLY: append member records to a deployed Cluster in bulk on anvil, by writing its storage.

Owns ``seed_members``: writes each record exactly where ``Cluster.register`` would have put it -- the
``Member`` struct in ``_members[id]``, the id at the end of ``_memberIds`` (registration order), the reverse
look-ups (``_idByAppId``, ``_idBySigner``) and the key holders (``_wgHolder``, ``_identityHolder``,
``_sealHolder``) -- then moves ``_nextHostIndex`` past the records' mesh IPs and bumps ``membershipVersion``
once, as one registration would. Slots come from the compiled ``storageLayout`` (``devnet.chainpoke``),
never hard-coded; words go to anvil as JSON-RPC batches of ``anvil_setStorageAt``.

Why it exists: the 10,000-member benchmark (``python -m bench --only scale``) needs a cluster that large,
and registering through ``register`` costs a member app, an approval and a dstack signature chain (pure
Python ECDSA) per member -- hours at that size. The records are written as is: no signature chain is
verified, no event is emitted (an indexer replaying logs does not see them), and the caller is responsible
for their being well-formed (distinct ids, keys and mesh IPs inside the mesh CIDR). It works only on a
chain that accepts ``anvil_setStorageAt``; a real chain refuses the method.
Must not: be used by the sidecar, the indexer, the devnet's own bring-up or any production path.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

import aiohttp

from devnet.chainpoke import WORD, Location, StorageLayout, string_words
from sidecar.core.ids import Address
from sidecar.core.model import MemberRecord

#: ``anvil_setStorageAt`` calls per JSON-RPC batch.
BATCH = 4000


class SeedError(RuntimeError):
    """anvil refused a write, or the records cannot be stored as given."""


def _word(value: int) -> bytes:
    return value.to_bytes(WORD, "big")


def _pack(layout: StorageLayout, fields: Sequence[tuple[Location, int]], words: dict[int, int]) -> None:
    """OR value-type ``fields`` into ``words`` (slot -> integer word) at their offsets."""
    for location, value in fields:
        size = int(layout.types[location.type_id]["numberOfBytes"])
        if value < 0 or value >= 1 << (8 * size):
            raise SeedError(f"{value} does not fit {location.type_id}")
        shift = 8 * location.offset
        words[location.slot] = (words.get(location.slot, 0) & ~(((1 << (8 * size)) - 1) << shift)) | (
            value << shift
        )


def member_words(layout: StorageLayout, record: MemberRecord, index: int) -> dict[int, bytes]:
    """Every storage word ``register`` writes for ``record`` as the ``index``-th member (0-based)."""
    entry = layout.mapping_entry(layout.variable("_members"), record.member_id.raw)

    def field(label: str) -> Location:
        return layout.member(entry, label)

    numbers: dict[int, int] = {}
    _pack(
        layout,
        [
            (field("id"), int.from_bytes(record.member_id.raw, "big")),
            (field("appId"), int.from_bytes(record.app_id.raw, "big")),
            (field("signer"), int.from_bytes(record.signer.raw, "big")),
            (field("sealPub"), int.from_bytes(record.seal_pub.raw, "big")),
            (field("wgPub"), int.from_bytes(record.wg_pub.raw, "big")),
            (field("identityPub"), int.from_bytes(record.identity_pub.raw, "big")),
            (field("meshIp"), int(record.mesh_ip)),
            (field("registeredAt"), record.registered_at),
        ],
        numbers,
    )
    words = {slot: _word(value) for slot, value in numbers.items()}
    words.update(string_words(field("endpoint").slot, record.endpoint.encode()))
    ids = layout.variable("_memberIds")
    words[_array_start(ids) + index] = record.member_id.raw
    for mapping, key in (
        ("_idByAppId", record.app_id.raw),
        ("_idBySigner", record.signer.raw),
        ("_wgHolder", record.wg_pub.raw),
        ("_identityHolder", record.identity_pub.raw),
        ("_sealHolder", record.seal_pub.raw),
    ):
        words[layout.mapping_entry(layout.variable(mapping), key).slot] = record.member_id.raw
    return words


def _array_start(array: Location) -> int:
    from eth_utils.crypto import keccak  # noqa: PLC0415 - test tooling: keep the import next to its use

    return int.from_bytes(keccak(_word(array.slot)), "big")


async def _rpc(session: aiohttp.ClientSession, url: str, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
    body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    async with session.post(url, json=body) as response:
        answers = await response.json()
    if not isinstance(answers, list):
        raise SeedError(f"anvil answered a batch with {type(answers).__name__}")
    errors = [a["error"] for a in answers if "error" in a]
    if errors:
        raise SeedError(f"anvil refused {len(errors)} of {len(calls)} calls: {errors[0]}")
    return [a.get("result") for a in sorted(answers, key=lambda a: int(a["id"]))]


async def _read_word(session: aiohttp.ClientSession, url: str, contract: Address, slot: int) -> int:
    (value,) = await _rpc(session, url, [("eth_getStorageAt", [str(contract), hex(slot), "latest"])])
    return int(str(value), 16)


async def seed_members(
    rpc_url: str, cluster: Address, records: Sequence[MemberRecord], *, mesh_base: IPv4Address
) -> None:
    """TEST-ONLY: append ``records`` to ``cluster``'s membership (see the module docstring)."""
    layout = StorageLayout.of("Cluster")
    ids = layout.variable("_memberIds")
    counters = layout.variable("_nextHostIndex")
    version = layout.variable("membershipVersion")
    if version.slot != counters.slot:
        raise SeedError("membershipVersion is no longer packed with _nextHostIndex: update the seeder")
    async with aiohttp.ClientSession() as session:
        count = await _read_word(session, rpc_url, cluster, ids.slot)
        packed = await _read_word(session, rpc_url, cluster, counters.slot)
        writes: dict[int, bytes] = {}
        for i, record in enumerate(records):
            writes.update(member_words(layout, record, count + i))
        next_host = max([int(r.mesh_ip) - int(mesh_base) + 1 for r in records], default=0)
        current_host = packed & 0xFFFFFFFF
        current_version = (packed >> (8 * version.offset)) & 0xFFFFFFFFFFFFFFFF
        numbers = {counters.slot: packed}
        _pack(
            layout,
            [(counters, max(current_host, next_host)), (version, current_version + 1)],
            numbers,
        )
        writes[counters.slot] = _word(numbers[counters.slot])
        writes[ids.slot] = _word(count + len(records))
        calls = [
            ("anvil_setStorageAt", [str(cluster), "0x" + _word(slot).hex(), "0x" + word.hex()])
            for slot, word in writes.items()
        ]
        for start in range(0, len(calls), BATCH):
            await _rpc(session, rpc_url, calls[start : start + BATCH])
