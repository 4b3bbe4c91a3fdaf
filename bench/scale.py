"""Membership at scale: a 10,000-member cluster on anvil, read page by page, and one wireguard-go device
carrying 10,000 peers.

The cluster is grown to 10, 100, 1,000 and 10,000 members with ``devnet.memberseed`` (TEST-ONLY: member
records written into the deployed Cluster's storage by its compiled layout, as ``register`` would have
stored them; registering 10,000 nodes for real costs a member app, an approval and a dstack signature
chain each). At each size:

- ``members()`` in one call through the old path (web3's contract call and formatting, what the binding did
  before issue 13) and through the lean eth_abi path (``ClusterClient.members``), up to 1,000 members;
- the full paged read (``SnapshotReader`` from nothing: ``syncState`` + ``ceil(n / MEMBERS_PAGE_SIZE)``
  ``membersPage`` calls + ``isAppAllowed`` + ``meshCidr``, pinned to one block hash) and the no-change pass
  (the same reader again: ``syncState`` only), with their ``eth_call`` counts;
- one reconcile from an empty device: the read, the plan (``screen_peers`` + ``desired_peers`` +
  ``plan_peers`` against the device's peers) and the apply (``sidecar.wg.uapi.UapiDevice.apply``, the
  sidecar's own adapter, one UAPI ``set=1``) into a real wireguard-go in the network namespace
  ``<bench lab>-scale``; then the RSS of wireguard-go and of this Python process.

Gas (``eth_estimateGas``; anvil runs with a 10 G block gas limit so large reads can be measured):
``members()`` at each size, the largest ``membersPage(0, k)`` (the same loop and encoding as ``members()``
at ``k`` members) that stays under a 50 M ``eth_call`` cap, and every page of the 10,000-member paged read.

The device's link stays down: wireguard-go then sends nothing (no handshakes to 10,000 endpoints); the
apply and the memory are what configuring the peers costs. Endpoints are ``127.0.0.1`` ports inside the
namespace. ``reconcile_series()`` returns (size, seconds) points for a plot.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import aiohttp
from eth_utils.crypto import keccak

from bench import labkit, plots
from devnet import procs
from devnet.anvil import DEVNET_DEPLOYER_KEY, AnvilProcess
from devnet.deployment import deploy_stack
from devnet.memberseed import seed_members
from devnet.wireguard import start_wireguard_go, uapi_set, uapi_socket
from sidecar.chain.artifacts import load_artifact
from sidecar.chain.contracts import (
    MEMBERS_PAGE_SIZE,
    ClusterClient,
    _member_record,  # the old path's decoder, unchanged
)
from sidecar.chain.rpc import ChainConnection, connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32
from sidecar.core.model import BootInfo, MemberRecord, MeshCidr, member_id_for
from sidecar.core.peerplan import PeerPlan, plan_peers
from sidecar.core.peerscreen import screen_peers
from sidecar.core.snapshot import Snapshot, desired_peers
from sidecar.drivers.snapshotread import SnapshotReader
from sidecar.wg.uapi import UapiDevice

SIZES = (10, 100, 1000, 10_000)
OLD_PATH_MAX = 1000  # members() through web3 is measured up to this size
RUNS = 11  # samples per read figure (median reported)
APPLY_RUNS = 3  # full reconciles into the device per size (median reported)
GAS_CAP = 50_000_000  # geth's default RPCGasCap, what many hosted endpoints keep
ANVIL_GAS_LIMIT = 10_000_000_000
NETNS = f"{labkit.LAB}-scale"
APPLY_TIMEOUT = 120.0
ENDPOINT_LENGTHS = (84, 255)  # a gateway route (the CVM form), the contract's longest
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SizeFigures:
    size: int
    old_members: float | None  # median s, members() through web3's contract call (None above OLD_PATH_MAX)
    lean_members: float | None  # median s, ClusterClient.members() (eth_abi)
    members_gas: int  # eth_estimateGas of members()
    paged_read: float  # median s, a SnapshotReader's first read
    paged_calls: Counter[str]  # JSON-RPC methods of one first read
    no_change: float  # median s, the same reader's next read
    no_change_calls: Counter[str]
    plan: float  # median s
    apply: float  # median s
    reconcile: float  # median s of read + device read + plan + apply, end to end
    wg_rss: int  # bytes, wireguard-go after the apply
    py_rss: int  # bytes, this process after the apply
    py_maxrss: int  # bytes, this process's peak so far


def long_endpoint(length: int) -> str:
    """A ``tls://`` endpoint of exactly ``length`` characters (DNS labels of at most 63)."""
    name_length = length - len("tls://") - len(":443")
    labels = []
    while name_length > 0:
        label = min(63, name_length)
        labels.append("n" * label)
        name_length -= label + 1
    name = ".".join(labels)[: length - 10]
    return f"tls://{name}:443"


def member_records(
    cluster: Address, mesh: MeshCidr, start: int, stop: int, endpoint: str | None = None
) -> list[MemberRecord]:
    """Synthetic, distinct, well-formed members ``start .. stop - 1`` (keys from keccak of the index)."""
    out = []
    for i in range(start, stop):
        tag = i.to_bytes(4, "big")
        app = Address(keccak(b"scale app" + tag)[:20])
        out.append(
            MemberRecord(
                member_id=member_id_for(cluster, app),
                app_id=app,
                signer=Address(keccak(b"scale signer" + tag)[:20]),
                seal_pub=Bytes32(keccak(b"scale seal" + tag)),
                wg_pub=Bytes32(keccak(b"scale wg" + tag)),
                identity_pub=Bytes32(keccak(b"scale identity" + tag)),
                endpoint=endpoint or f"127.0.0.1:{20000 + i % 40000}",
                mesh_ip=mesh.network.network_address + i + 1,
                registered_at=1_700_000_000 + i,
            )
        )
    return out


def boot_info(me: MemberRecord) -> BootInfo:
    zero = Bytes32(bytes(32))
    return BootInfo(
        me.app_id, Bytes32(keccak(b"bench")), Address(bytes(20)), zero, zero, zero, zero, "UpToDate"
    )


async def timed(work: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    t0 = time.perf_counter()
    result = await work()
    return time.perf_counter() - t0, result


async def median_of(runs: int, work: Callable[[], Awaitable[Any]]) -> float:
    return statistics.median([(await timed(work))[0] for _ in range(runs)])


async def old_members(cluster: ClusterClient) -> list[MemberRecord | None]:
    """``members()`` as the binding read it before issue 13: web3's contract call and its output formatting
    (web3 is a development dependency since then; ``ChainConnection.w3`` builds it for tooling)."""
    w3 = cluster.connection.w3
    address = cast(Any, cluster.address.checksum)  # web3's ChecksumAddress
    contract = w3.eth.contract(address=address, abi=load_artifact("Cluster").abi_list())
    return [_member_record(raw) for raw in await contract.functions.members().call()]


async def estimate(session: aiohttp.ClientSession, url: str, to: Address, data: bytes) -> int:
    call = {"to": str(to), "data": "0x" + data.hex()}
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_estimateGas", "params": [call, "latest"]}
    async with session.post(url, json=body) as response:
        answer = await response.json()
    if "error" in answer:
        raise labkit.BenchError(f"eth_estimateGas: {answer['error']}")
    return int(answer["result"], 16)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --- the namespace and its wireguard-go -------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Device:
    """wireguard-go in ``NETNS`` (link down), driven through the sidecar's ``UapiDevice``."""

    def __init__(self, root: Path) -> None:
        if (
            NETNS
            in subprocess.run(
                ["ip", "netns", "list"], check=True, capture_output=True, text=True
            ).stdout.split()
        ):
            _ip("netns", "del", NETNS)  # our own leftover (the name carries the bench lab's prefix)
        _ip("netns", "add", NETNS)
        self.uapi_dir = root / "wg"
        try:
            self.proc = start_wireguard_go(NETNS, self.uapi_dir, log_path=root / "wireguard-go.log")
        except BaseException:
            _ip("netns", "del", NETNS)
            raise
        self.socket = uapi_socket(self.uapi_dir)
        uapi_set(self.socket, [f"private_key={keccak(b'scale device key').hex()}", "listen_port=51820"])
        self.uapi = UapiDevice(self.socket, timeout=APPLY_TIMEOUT)

    def clear(self) -> None:
        uapi_set(self.socket, ["replace_peers=true"], timeout=APPLY_TIMEOUT)

    def close(self) -> None:
        procs.terminate(self.proc)
        _ip("netns", "del", NETNS)


# --- one size -------------------------------------------------------------------------------------------


async def reconcile_once(
    reader: SnapshotReader, cluster: ClusterClient, conn: ChainConnection, device: Device, boot: BootInfo
) -> tuple[Snapshot, PeerPlan, float, float]:
    """Read, plan and apply into the device; returns the snapshot, the plan, plan and apply seconds."""
    header = await conn.block_header("latest")
    snapshot = await reader.read(cluster, header.number, header.hash, boot)
    t0 = time.perf_counter()
    actual = await device.uapi.read_peers()
    me = snapshot.by_app(boot.app_id)
    assert me is not None
    screen = screen_peers(snapshot.members, me, snapshot.mesh)
    plan = plan_peers(desired_peers(screen.usable), actual, None, time.time())
    t1 = time.perf_counter()
    await device.uapi.apply(plan)
    return snapshot, plan, t1 - t0, time.perf_counter() - t1


async def measure_size(  # noqa: PLR0917 - one call site, every part named there
    size: int,
    conn: ChainConnection,
    methods: Counter[str],
    cluster: ClusterClient,
    device: Device,
    session: aiohttp.ClientSession,
    url: str,
    boot: BootInfo,
) -> SizeFigures:
    old = lean = None
    if size <= OLD_PATH_MAX:
        old = await median_of(RUNS, lambda: old_members(cluster))
        lean = await median_of(RUNS, cluster.members)
    members_gas = await estimate(session, url, cluster.address, cluster.encode_call("members"))
    header = await conn.block_header("latest")

    async def first_read() -> Snapshot:
        return await SnapshotReader().read(cluster, header.number, header.hash, boot)

    methods.clear()
    await first_read()
    paged_calls = Counter(methods)
    paged = await median_of(RUNS, first_read)
    reader = SnapshotReader()
    await reader.read(cluster, header.number, header.hash, boot)
    methods.clear()
    await reader.read(cluster, header.number, header.hash, boot)
    no_change_calls = Counter(methods)
    no_change = await median_of(RUNS, lambda: reader.read(cluster, header.number, header.hash, boot))

    plans, applies, totals = [], [], []
    for _ in range(APPLY_RUNS):
        device.clear()
        total, (_, plan, plan_s, apply_s) = await timed(
            lambda: reconcile_once(SnapshotReader(), cluster, conn, device, boot)
        )
        if len(plan.add) != size - 1:
            raise labkit.BenchError(f"planned {len(plan.add)} peers for {size} members")
        plans.append(plan_s)
        applies.append(apply_s)
        totals.append(total)
    held = await device.uapi.read_peers()
    if len(held) != size - 1:
        raise labkit.BenchError(f"the device holds {len(held)} peers, expected {size - 1}")
    return SizeFigures(
        size=size,
        old_members=old,
        lean_members=lean,
        members_gas=members_gas,
        paged_read=paged,
        paged_calls=paged_calls,
        no_change=no_change,
        no_change_calls=no_change_calls,
        plan=statistics.median(plans),
        apply=statistics.median(applies),
        reconcile=statistics.median(totals),
        wg_rss=rss(device.proc.pid),
        py_rss=rss(os.getpid()),
        py_maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )


async def page_gas(
    cluster: ClusterClient, session: aiohttp.ClientSession, url: str, total: int
) -> tuple[list[int], int]:
    """Gas of every ``MEMBERS_PAGE_SIZE`` page of ``total`` members, and the largest ``k`` whose
    ``membersPage(0, k)`` stays under ``GAS_CAP`` (binary search)."""
    pages = [
        await estimate(
            session, url, cluster.address, cluster.encode_call("membersPage", o, MEMBERS_PAGE_SIZE)
        )
        for o in range(0, total, MEMBERS_PAGE_SIZE)
    ]
    low, high = 1, total
    while low < high:
        mid = (low + high + 1) // 2
        gas = await estimate(session, url, cluster.address, cluster.encode_call("membersPage", 0, mid))
        low, high = (mid, high) if gas <= GAS_CAP else (low, mid - 1)
    return pages, low


async def endpoint_page_gas(
    conn: ChainConnection, owner: TxSubmitter, session: aiohttp.ClientSession, url: str, mesh: MeshCidr
) -> dict[int, int]:
    """Gas of one full ``membersPage`` page whose members all carry ``ENDPOINT_LENGTHS``-long endpoints
    (a fresh cluster each): what bounds the page size."""
    out = {}
    for length in ENDPOINT_LENGTHS:
        deployment = await deploy_stack(
            conn,
            owner,
            kms_roots=(),
            compose_hashes=(),
            mesh_cidr=mesh,
            salt=Bytes32(keccak(b"scale endpoints %d" % length)),
        )
        cluster = ClusterClient(conn, deployment.cluster)
        endpoint = long_endpoint(length)
        assert len(endpoint) == length
        records = member_records(cluster.address, mesh, 0, MEMBERS_PAGE_SIZE, endpoint)
        await seed_members(url, cluster.address, records, mesh_base=mesh.network.network_address)
        data = cluster.encode_call("membersPage", 0, MEMBERS_PAGE_SIZE)
        out[length] = await estimate(session, url, cluster.address, data)
    return out


@dataclass(frozen=True, slots=True)
class ScaleRun:
    sizes: list[SizeFigures]
    endpoint_gas: dict[int, int]  # endpoint length -> gas of one full page
    page_gas: list[int]  # at the largest size
    max_members_under_cap: int
    no_change_device: float  # s: device read + plan at the largest size, nothing to do


async def run(sizes: Sequence[int] = SIZES) -> ScaleRun:
    """Grow one cluster through ``sizes`` and measure each (see the module docstring)."""
    mesh = MeshCidr.parse(labkit.MESH)
    if mesh.network.num_addresses - 2 < max(sizes):
        raise labkit.BenchError(f"mesh {mesh.network} cannot hold {max(sizes)} members")
    methods: Counter[str] = Counter()

    def count(method: str) -> None:
        methods[method] += 1

    root = Path(tempfile.mkdtemp(prefix="am-scale-", dir="/tmp"))
    device = Device(root)
    try:
        async with (
            AnvilProcess(extra_args=("--gas-limit", str(ANVIL_GAS_LIMIT))) as anvil,
            await connect(anvil.rpc_url, timeout=APPLY_TIMEOUT, on_rpc=count) as conn,
            aiohttp.ClientSession() as session,
        ):
            owner = TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY), poll_interval=0.01)
            deployment = await deploy_stack(
                conn, owner, kms_roots=(), compose_hashes=(Bytes32(keccak(b"bench")),), mesh_cidr=mesh
            )
            cluster = ClusterClient(conn, deployment.cluster)
            figures: list[SizeFigures] = []
            grown = 0
            boot: BootInfo | None = None
            for size in sizes:
                records = member_records(cluster.address, mesh, grown, size)
                await seed_members(
                    anvil.rpc_url, cluster.address, records, mesh_base=mesh.network.network_address
                )
                await owner.send(owner.address, b"")  # a new block over the seeded state
                boot = boot or boot_info(records[0])
                grown = size
                figures.append(
                    await measure_size(size, conn, methods, cluster, device, session, anvil.rpc_url, boot)
                )
            assert boot is not None
            pages, under_cap = await page_gas(cluster, session, anvil.rpc_url, grown)
            endpoint_gas = await endpoint_page_gas(conn, owner, session, anvil.rpc_url, mesh)
            header = await conn.block_header("latest")
            snapshot = await SnapshotReader().read(cluster, header.number, header.hash, boot)
            me = snapshot.by_app(boot.app_id)
            assert me is not None
            usable = screen_peers(snapshot.members, me, snapshot.mesh).usable

            async def idle_pass() -> PeerPlan:
                plan = plan_peers(desired_peers(usable), await device.uapi.read_peers(), None, time.time())
                if not plan.empty:
                    raise labkit.BenchError("a no-change pass planned changes")
                return plan

            idle = await median_of(RUNS, idle_pass)
    finally:
        device.close()
        shutil.rmtree(root, ignore_errors=True)
    return ScaleRun(figures, endpoint_gas, pages, under_cap, idle)


def reconcile_series(result: ScaleRun) -> list[tuple[int, float]]:
    """(cluster size, seconds of one reconcile from an empty device: read + plan + apply), for a plot."""
    return [(f.size, f.reconcile) for f in result.sizes]


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _calls(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {m}" for m, n in sorted(counter.items()))


def print_run(result: ScaleRun) -> None:
    print(f"members() and the paged read on anvil 1.7.1 (127.0.0.1), median of {RUNS} calls")
    print(
        f"{'members':>7} {'members() old':>14} {'members() lean':>15} {'members() gas':>14}"
        f" {'paged read':>11} {'no-change':>10}"
    )
    for f in result.sizes:
        print(
            f"{f.size:>7} {_ms(f.old_members):>14} {_ms(f.lean_members):>15} {f.members_gas:>14,}"
            f" {_ms(f.paged_read):>11} {_ms(f.no_change):>10}"
        )
    for f in result.sizes:
        first, again = _calls(f.paged_calls), _calls(f.no_change_calls)
        print(f"  {f.size:>6} members: first read {first}; no-change {again}")
    largest = result.sizes[-1].size
    pages = result.page_gas
    print(
        f"\ngas at {largest:,} members: {len(pages)} pages of {MEMBERS_PAGE_SIZE} — median "
        f"{statistics.median(pages):,.0f}, max {max(pages):,}"
        f" ({max(pages) / min(MEMBERS_PAGE_SIZE, largest):,.0f} a member);"
        f" members() in one call {result.sizes[-1].members_gas:,};"
        f" the largest membersPage(0, k) under {GAS_CAP:,}: k = {result.max_members_under_cap:,}"
    )
    for length, gas in result.endpoint_gas.items():
        print(
            f"  a page of {MEMBERS_PAGE_SIZE} members with {length}-byte endpoints: {gas:,} gas"
            f" ({gas / MEMBERS_PAGE_SIZE:,.0f} a member)"
        )
    print(f"\nreconcile from an empty device (wireguard-go in {NETNS}, link down), median of {APPLY_RUNS}")
    print(
        f"{'members':>7} {'read+plan+apply':>16} {'plan':>9} {'apply':>10} {'wireguard-go RSS':>17}"
        f" {'python RSS':>11} {'python peak':>12}"
    )
    for f in result.sizes:
        print(
            f"{f.size:>7} {_ms(f.reconcile):>16} {_ms(f.plan):>9} {_ms(f.apply):>10} {_mib(f.wg_rss):>17}"
            f" {_mib(f.py_rss):>11} {_mib(f.py_maxrss):>12}"
        )
    print(
        f"no-change pass at {largest:,} members: syncState {_ms(result.sizes[-1].no_change)}"
        f" + device read and plan {_ms(result.no_change_device)}"
    )
    print("series (size, seconds):", [(n, round(s, 4)) for n, s in reconcile_series(result)])
    print(
        f"page size {MEMBERS_PAGE_SIZE}: ceil(n / {MEMBERS_PAGE_SIZE}) membersPage calls per full read; "
        f"{math.ceil(largest / MEMBERS_PAGE_SIZE)} at {largest:,}"
    )


def plot(result: ScaleRun) -> Path:
    """The reconcile cost vs cluster size plot (10 → 10,000): one full reconcile from an empty device, the
    paged read alone and a no-change pass (``syncState`` only)."""
    series = {
        "reconcile from an empty device (read + plan + apply to wireguard-go)": reconcile_series(result),
        "full paged read (syncState + membersPage)": [(f.size, f.paged_read) for f in result.sizes],
        "no-change pass (syncState)": [(f.size, f.no_change) for f in result.sizes],
    }
    return plots.reconcile_cost(series, plots.Output.path("reconcile-cost"))


async def main() -> None:
    result = await run()
    print_run(result)
    print(f"plot: {plot(result)}")
