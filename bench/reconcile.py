"""Reconcile cost against cluster size: pure peer planning, and ``members()`` read in one call.

(The sidecar reads members page by page and only when they changed: ``bench/scale.py`` measures that,
up to 10,000 members and one wireguard-go device.)

Planning: ``sidecar.core.peerplan.plan_peers`` at 10, 100 and 1000 members in three situations — full add
(an empty device), no change (the device already holds every peer, handshakes recent), and 1 % changed
(``max(1, n // 100)`` members whose chain endpoint changed since the previous pass: that many updates).
Each figure is the median of several samples, each sample the mean of a loop of calls
(``time.perf_counter``).

Chain read: a fresh anvil on 127.0.0.1 (automine) with our stack, ``n`` members registered for real
(each app id a member app the factory deployed for the cluster, then pre-approved — the cluster accepts
nothing else — signers funded with ``anvil_setBalance``, keys and signature chains from the devnet KMS), then
one ``ClusterClient.members()`` call timed at 100 and at 1000 members, plus the size of the raw
``eth_call`` response and the gas that call costs (what an RPC provider's ``eth_call`` gas cap is checked
against).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import aiohttp
from eth_utils.crypto import keccak

from bench import plots
from devnet.anvil import DEVNET_DEPLOYER_KEY, AnvilProcess
from devnet.deployment import deploy_stack
from devnet.kms import DevnetKms, derive_key, get_key
from sidecar.chain.contracts import ClusterClient, MemberAppFactoryClient
from sidecar.chain.rpc import connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.keys import KeyPath, KeyScope, ed25519_public_key, x25519_public_key
from sidecar.core.model import MemberKeys
from sidecar.core.peerplan import ActualPeer, DesiredPeer, PeerPlan, WgKey, plan_peers
from sidecar.core.sigchain import SigChainProof, build_proof

#: The chain and cluster the bench's members derive their keys for (any one does: no node predicts them).
BENCH_KEYS = KeyScope(31337, Address(bytes(20)))

PLAN_SIZES = (10, 100, 1000)
CHAIN_SIZES = (100, 1000)
SAMPLES = 21  # samples per planning figure (median reported)
SAMPLE_BUDGET_S = 0.02  # each sample loops plan_peers for about this long
CALLS = 10  # members() calls per chain size (median reported), after one warm-up call
REGISTER_BATCH = 16  # registrations in flight at once (distinct signers, so no nonce contention)
SIGNER_BALANCE_WEI = 10**18
WG_PORT = 51820
GAS_CAP = 50_000_000  # geth's default RPCGasCap: the most gas an eth_call may use on such a node


# --- planning -----------------------------------------------------------------------------------------


def _key(i: int) -> WgKey:
    return WgKey(keccak(b"attestmesh/bench/wg" + i.to_bytes(4, "big")))


def _desired(n: int) -> list[DesiredPeer]:
    mesh = IPv4Network("10.13.0.0/16")
    return [
        DesiredPeer(
            member_id=MemberId(keccak(i.to_bytes(4, "big"))),
            public_key=_key(i),
            endpoint=f"10.0.{i // 250}.{i % 250 + 1}:{WG_PORT}",
            allowed_ips=(IPv4Network(f"{mesh.network_address + i + 1}/32"),),
        )
        for i in range(n)
    ]


def _actual(peers: Sequence[DesiredPeer], now: float) -> list[ActualPeer]:
    return [
        ActualPeer(
            public_key=p.public_key,
            endpoint=p.endpoint,
            allowed_ips=p.allowed_ips,
            keepalive=p.keepalive,
            last_handshake=now - 10.0,
            rx_bytes=1000,
            tx_bytes=1000,
        )
        for p in peers
    ]


def _moved(peer: DesiredPeer) -> DesiredPeer:
    """The same member with a new endpoint on chain (its host moved)."""
    host, _, port = (peer.endpoint or "").rpartition(":")
    new_host = IPv4Address(host) + 256
    return DesiredPeer(
        peer.member_id, peer.public_key, f"{new_host}:{port}", peer.allowed_ips, peer.keepalive
    )


@dataclass(frozen=True, slots=True)
class PlanCase:
    name: str
    call: Callable[[], PeerPlan]


def _cases(n: int, now: float) -> list[PlanCase]:
    desired = _desired(n)
    actual = _actual(desired, now)
    previous = {p.public_key: p for p in desired}
    changed = max(1, n // 100)
    moved = [_moved(p) if i < changed else p for i, p in enumerate(desired)]
    return [
        PlanCase("full add", lambda: plan_peers(desired, [], None, now)),
        PlanCase("no change", lambda: plan_peers(desired, actual, previous, now)),
        PlanCase(f"1% changed ({changed} endpoint)", lambda: plan_peers(moved, actual, previous, now)),
    ]


def _time_cases(cases: Sequence[PlanCase]) -> list[tuple[float, PeerPlan]]:
    """Median seconds per call of each case, and its plan. Each sample is a loop of calls sized to about
    ``SAMPLE_BUDGET_S``; the cases' samples are interleaved, so a burst of load from elsewhere on the
    machine lands on every case alike rather than on one."""
    plans, loops = [], []
    for case in cases:
        plans.append(case.call())  # warm-up, and the plan's shape for the table
        t0 = time.perf_counter()
        case.call()
        loops.append(max(1, int(SAMPLE_BUDGET_S / max(time.perf_counter() - t0, 1e-7))))
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(SAMPLES):
        for case, n, out in zip(cases, loops, samples, strict=True):
            t0 = time.perf_counter()
            for _ in range(n):
                case.call()
            out.append((time.perf_counter() - t0) / n)
    return [(statistics.median(out), plan) for out, plan in zip(samples, plans, strict=True)]


def plan_figures() -> dict[str, list[tuple[int, float]]]:
    """Print the planning table; return each case's (members, seconds) points (for the plot)."""
    now = time.time()
    points: dict[str, list[tuple[int, float]]] = {}
    print(
        f"reconcile planning — plan_peers, median of {SAMPLES} samples per figure"
        f" (each a loop of calls lasting about {SAMPLE_BUDGET_S * 1000:.0f} ms; cases interleaved)"
    )
    print(f"{'members':>7} {'case':28} {'median':>10} {'per member':>11} {'plan (add/remove/update)':>26}")
    for n in PLAN_SIZES:
        cases = _cases(n, now)
        for case, (seconds, plan) in zip(cases, _time_cases(cases), strict=True):
            shape = f"{len(plan.add)}/{len(plan.remove)}/{len(plan.update)}"
            print(f"{n:>7} {case.name:28} {_fmt_s(seconds):>10} {_fmt_s(seconds / n):>11} {shape:>26}")
            points.setdefault(f"plan_peers: {case.name}", []).append((n, seconds))
    return points


def _fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


# --- members() on anvil -------------------------------------------------------------------------------

#: One member's public registration material, built in a worker process (pure-Python ECDSA is slow).
#: The signer key crosses the process boundary as bytes: SecretBytes refuses pickling on purpose, and this
#: key is derived from the devnet KMS's published seed, so it protects nothing.
Material = tuple[bytes, SigChainProof, MemberKeys]


@functools.cache
def worker_kms() -> DevnetKms:
    """One devnet KMS per worker process (it caches the app keys it has issued)."""
    return DevnetKms()


def member_name(i: int) -> str:
    """Member ``i``'s node name: its app id is the member-app factory's address for (cluster, name)."""
    return f"bench-{i}"


def _material(app: Address) -> Material:
    kms = worker_kms()
    key, chain = get_key(kms, app, BENCH_KEYS.path(KeyPath.SIGNER), KeyPath.SIGNER.purpose)
    proof = build_proof(app, key, chain)
    # The other keys need no signature chain: the same derivation GetKey does, without the app signature.
    app_key = kms.app_key(app)
    keys = MemberKeys(
        seal_pub=Bytes32(x25519_public_key(derive_key(app_key, BENCH_KEYS.path(KeyPath.SEAL)))),
        wg_pub=Bytes32(x25519_public_key(derive_key(app_key, BENCH_KEYS.path(KeyPath.WIREGUARD)))),
        identity_pub=Bytes32(ed25519_public_key(derive_key(app_key, BENCH_KEYS.path(KeyPath.IDENTITY)))),
    )
    return key.reveal(), proof, keys


async def _raw_rpc(session: aiohttp.ClientSession, url: str, method: str, params: list[Any]) -> bytes:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with session.post(url, json=body) as response:
        raw = await response.read()
    answer = json.loads(raw)
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return raw


@dataclass(frozen=True, slots=True)
class MembersFigure:
    members: int
    latency: float  # median seconds of ClusterClient.members() (call + decode into MemberRecords)
    raw_latency: float  # median seconds of the bare eth_call over HTTP (no decoding)
    response_bytes: int  # HTTP body of the eth_call response (JSON, hex-encoded ABI)
    abi_bytes: int  # the ABI-encoded return data
    gas: int  # eth_estimateGas of the same call
    setup: float  # seconds it took to register the members added for this size


async def grow(
    url: str,
    admin: ClusterClient,
    session: aiohttp.ClientSession,
    pool: ProcessPoolExecutor,
    members: range,
    *,
    factory: Address,
) -> dict[int, Address]:
    """Register ``members`` (indexes); return their app ids. Keys are derived in ``pool`` while the owner
    deploys each member app (``factory``) and allowlists it, one by one; each signer is funded with
    ``anvil_setBalance`` and registers as soon as its app id is allowed (``REGISTER_BATCH`` in flight)."""
    assert admin.submitter is not None
    conn = admin.submitter.connection
    apps_factory = MemberAppFactoryClient(conn, factory, admin.submitter)
    apps = {i: await apps_factory.predict(admin.address, member_name(i)) for i in members}
    loop = asyncio.get_running_loop()
    materials = {i: loop.run_in_executor(pool, _material, apps[i]) for i in members}
    allowed = {i: asyncio.Event() for i in members}
    slots = asyncio.Semaphore(REGISTER_BATCH)

    async def allow_all() -> None:
        for i in members:
            await apps_factory.deploy(admin.address, member_name(i))
            await admin.add_allowed_app_id(apps[i])
            allowed[i].set()

    async def register(i: int) -> None:
        key, proof, keys = await materials[i]
        await allowed[i].wait()
        async with slots:
            await _raw_rpc(session, url, "anvil_setBalance", [proof.signer.checksum, hex(SIGNER_BALANCE_WEI)])
            signer = TxSubmitter(conn, LocalSigner(SecretBytes(key)), poll_interval=0.01)
            await admin.with_submitter(signer).register(proof, keys, f"10.0.0.1:{WG_PORT}")

    try:
        await asyncio.gather(allow_all(), *(register(i) for i in members))
    finally:
        for future in materials.values():
            future.cancel()
    return apps


async def _measure_members(
    url: str, cluster: ClusterClient, session: aiohttp.ClientSession, n: int, setup: float
) -> MembersFigure:
    records = await cluster.members()  # warm-up, and a check that the chain holds what we think
    if len(records) != n:
        raise RuntimeError(f"expected {n} members on chain, found {len(records)}")
    latencies = []
    for _ in range(CALLS):
        t0 = time.perf_counter()
        await cluster.members()
        latencies.append(time.perf_counter() - t0)
    call = {"to": cluster.address.checksum, "data": "0x" + cluster.encode_call("members").hex()}
    raw_latencies = []
    raw = b""
    for _ in range(CALLS):
        t0 = time.perf_counter()
        raw = await _raw_rpc(session, url, "eth_call", [call, "latest"])
        raw_latencies.append(time.perf_counter() - t0)
    result = json.loads(raw)["result"]
    gas = int(json.loads(await _raw_rpc(session, url, "eth_estimateGas", [call, "latest"]))["result"], 16)
    return MembersFigure(
        members=n,
        latency=statistics.median(latencies),
        raw_latency=statistics.median(raw_latencies),
        response_bytes=len(raw),
        abi_bytes=(len(result) - 2) // 2,
        gas=gas,
        setup=setup,
    )


async def chain_figures() -> list[MembersFigure]:
    figures: list[MembersFigure] = []
    kms = DevnetKms()
    # Pure-Python ECDSA makes a member's keys and proof cost tens of ms: derive them on every core. No
    # derivation runs while members() is being timed.
    pool = ProcessPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1)))
    try:
        async with (
            AnvilProcess() as anvil,
            await connect(anvil.rpc_url) as conn,
            aiohttp.ClientSession() as session,
        ):
            owner = TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY), poll_interval=0.01)
            deployment = await deploy_stack(
                conn, owner, kms_roots=(kms.root_address,), compose_hashes=(Bytes32(keccak(b"bench")),)
            )
            admin = ClusterClient(conn, deployment.cluster, owner)
            registered = 0
            for n in CHAIN_SIZES:
                t0 = time.perf_counter()
                await grow(
                    anvil.rpc_url,
                    admin,
                    session,
                    pool,
                    range(registered, n),
                    factory=deployment.member_app_factory,
                )
                registered = n
                setup = time.perf_counter() - t0
                figures.append(await _measure_members(anvil.rpc_url, admin, session, n, setup))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return figures


def print_chain_figures(figures: Sequence[MembersFigure]) -> None:
    print(f"members() on anvil 1.7.1 (127.0.0.1, automine) — median of {CALLS} calls after one warm-up")
    print(
        f"{'members':>7} {'members()':>10} {'eth_call':>10} {'decode':>10} {'response':>9}"
        f" {'ABI bytes':>9} {'B/member':>8} {'call gas':>10} {'gas/member':>10}"
    )
    for f in figures:
        print(
            f"{f.members:>7} {_fmt_s(f.latency):>10} {_fmt_s(f.raw_latency):>10}"
            f" {_fmt_s(f.latency - f.raw_latency):>10} {_fmt_kb(f.response_bytes):>9} {f.abi_bytes:>9}"
            f" {f.abi_bytes / f.members:>8.0f} {f.gas:>10} {f.gas / f.members:>10.0f}"
        )
    print("  members(): ClusterClient.members() (eth_call + decoding into MemberRecords);")
    print("  eth_call: the same call as bare JSON-RPC over HTTP; decode: the difference")
    if len(figures) >= 2:
        a, b = figures[0], figures[-1]
        marginal = (b.gas - a.gas) / (b.members - a.members)
        print(
            f"  x{b.members / a.members:g} members: members() x{b.latency / a.latency:.1f},"
            f" eth_call x{b.raw_latency / a.raw_latency:.1f},"
            f" response x{b.response_bytes / a.response_bytes:.1f},"
            f" gas x{b.gas / a.gas:.1f} ({marginal:.0f} gas per extra member: a 50M eth_call gas cap"
            f" is reached near {b.members + (GAS_CAP - b.gas) / marginal:.0f} members)"
        )
    for f in figures:
        print(f"  (registering members up to {f.members} took {f.setup:.0f} s; not part of the figures)")


def _fmt_kb(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n >= 10 * 1024 else f"{n} B"


async def main() -> None:
    series = plan_figures()
    print()
    figures = await chain_figures()
    print_chain_figures(figures)
    series["members() read (eth_call + decode)"] = [(f.members, f.latency) for f in figures]
    path = plots.reconcile_cost(series, plots.Output.path("reconcile-plan"))
    print(f"plot: {path}")
