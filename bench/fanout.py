"""Indexer fan-out: one real indexer process serving 200 subscribed members on loopback.

Set-up: a fresh anvil on 127.0.0.1 (automine) with our stack; ``SUBSCRIBERS`` members registered for real in
one cluster (``bench.reconcile.grow``: keys and signature chains from the devnet KMS); the indexer started as
its own process (``python -m indexer``) with its signing key from its own guest-agent simulator process, then
one WebSocket client per member in this process, each with a hello signed by that member's identity key,
verifying every push with ``PushVerifier`` and acking it, as the sidecar does.

Measured, over ``ROUNDS`` rounds of one cluster event each (an owner ``addComposeHash`` transaction, which
every member of the cluster is sent):

- push latency, block seen → delivered: from the moment the indexer committed the block's logs (the
  wall-clock timestamp of its ``follower.logs_indexed`` log line) to the moment each subscriber's client
  received the event frame (wall clock, taken before verification) — median and p99 over all deliveries.
  The clients share this machine's cores with the indexer, so this includes their own scheduling;
- the indexer's own view of the same delay (``attestmesh_indexer_push_delay_seconds``: indexed → frame
  written), its mean and the bucket holding its p99;
- mined → delivered: from the transaction's receipt to delivery, which adds the indexer's poll interval;
- the indexer's memory (VmRSS of its process): before any subscriber, with every subscriber connected and
  caught up, and after the rounds (and its peak, VmHWM).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
from eth_utils.crypto import keccak
from prometheus_client.parser import text_string_to_metric_families

from bench import plots
from bench.reconcile import grow
from devnet import procs
from devnet.anvil import DEVNET_DEPLOYER_KEY, AnvilProcess
from devnet.compose import INDEXER_COMPOSE_BYTES
from devnet.deployment import deploy_stack
from devnet.kms import DevnetKms, derive_key
from indexer.service import key_path
from sidecar.chain.contracts import ClusterClient
from sidecar.chain.rpc import connect
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.cursor import Cursor
from sidecar.core.ids import Address, Bytes32, MemberId, SecretBytes
from sidecar.core.indexerwire import (
    Checkpoint,
    Close,
    Event,
    PushVerifier,
    Verified,
    Welcome,
    decode,
    encode,
    sign_hello,
)
from sidecar.core.keys import KeyPath, KeyScope, ed25519_public_key

#: The chain and cluster the bench's members derive their keys for (any one does: no node predicts them).
BENCH_KEYS = KeyScope(31337, Address(bytes(20)))

SUBSCRIBERS = 200
ROUNDS = 15
RUNS = 3  # each on a fresh chain and indexer
HANDSHAKES = SUBSCRIBERS  # hellos in flight at once: all of them, like every sidecar after an indexer restart
INDEXER_POLL_INTERVAL = 0.5
DEADLINE = 120.0
INDEXER_APP = Address(keccak(b"attestmesh/bench/fanout/indexer")[:20])


@dataclass
class Client:
    """One subscribed member: its socket, verifier and the wall-clock receive time of every event."""

    member_id: MemberId
    identity: SecretBytes = field(repr=False)
    ws: aiohttp.ClientWebSocketResponse | None = None
    verifier: PushVerifier | None = None
    received: dict[int, float] = field(default_factory=dict)  # block → wall-clock receive time
    checkpoint: int = 0
    failure: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def _indexed_at(log_file: Path) -> list[tuple[int, float]]:
    """(through block, wall-clock time) of every ``follower.logs_indexed`` line of the indexer's log."""
    out = []
    for line in log_file.read_text().splitlines():
        if '"follower.logs_indexed"' not in line:
            continue
        entry = json.loads(line)
        at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
        out.append((int(entry["through"]), at))
    return out


async def _until(check: object, what: str, deadline: float = DEADLINE) -> None:
    assert callable(check)
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass(frozen=True, slots=True)
class Stream:
    cluster: Address
    indexer: Bytes32
    start: Cursor
    gate: asyncio.Semaphore


async def _subscribe(http: aiohttp.ClientSession, url: str, stream: Stream, client: Client) -> None:
    """Open the stream from its start, then verify, record and ack every message until the socket closes."""
    cluster, indexer, start = stream.cluster, stream.indexer, stream.start
    await stream.gate.acquire()  # at most HANDSHAKES hellos in flight; released at the welcome
    ws = await http.ws_connect(url, max_msg_size=1 << 20)
    client.ws = ws
    hello = sign_hello(
        cluster=cluster,
        member_id=client.member_id,
        indexer=indexer,
        cursor=start,
        timestamp_ms=int(time.time() * 1000),
        nonce=os.urandom(16),
        identity_key=client.identity,
    )
    await ws.send_str(encode(hello))
    async for frame in ws:
        at = time.time()
        if frame.type != aiohttp.WSMsgType.TEXT:
            break
        message = decode(frame.data)
        if isinstance(message, Welcome):
            stream.gate.release()
            client.verifier = PushVerifier(cluster, indexer, start, hello.nonce)
            problem = client.verifier.welcome(message)
            if problem is not None:
                client.failure = f"welcome rejected: {problem}"
                break
            continue
        if isinstance(message, Close):
            client.failure = f"closed: {message.reason}"
            break
        assert client.verifier is not None
        checked = client.verifier.check(message)
        if not isinstance(checked, Verified):
            client.failure = f"push rejected: {checked}"
            break
        client.verifier.accept(checked)
        if isinstance(message, Event):
            client.received.setdefault(message.log.block_number, at)
        elif isinstance(message, Checkpoint):
            client.checkpoint = message.block
        ack = client.verifier.ack()
        if ack is not None:
            await ws.send_str(encode(ack))


@dataclass(frozen=True, slots=True)
class FanoutFigures:
    subscribers: int
    rounds: int
    deliveries: int
    seen_to_delivered: list[float]
    mined_to_delivered: list[float]
    indexer_mean: float
    indexer_p99_bucket: str
    rss_idle_kib: int
    rss_subscribed_kib: int
    rss_after_kib: int
    hwm_kib: int
    setup_s: float


def _histogram(text: str) -> tuple[float, str]:
    """Mean and the upper bound of the bucket holding the 99th percentile of the indexer's histogram."""
    buckets: list[tuple[float, float]] = []
    total, count = 0.0, 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "attestmesh_indexer_push_delay_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    if not count:
        return 0.0, "-"
    for upper, cumulative in sorted(buckets):
        if cumulative >= 0.99 * count:
            return total / count, f"≤ {upper * 1000:g} ms" if upper != float("inf") else "> 5 s"
    return total / count, "-"


@dataclass
class Lab:
    """The running parts of one fan-out measurement."""

    work: Path
    http: aiohttp.ClientSession
    rpc_url: str
    chain_id: int
    admin: ClusterClient
    cluster: Address
    running: list[procs.ProcRecord] = field(default_factory=list)
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_indexer(self, factory: Address, start_block: int) -> procs.ProcRecord:
        """The indexer's guest agent (simulator) and the indexer, as processes on loopback."""
        work = self.work
        (work / "app-compose.json").write_bytes(INDEXER_COMPOSE_BYTES)
        config = {"app_id": INDEXER_APP.hex, "instance_id": "11" * 20,
                  "app_compose_path": "app-compose.json", "app_name": "attestmesh-indexer"}  # fmt: skip
        (work / "simulator.json").write_text(json.dumps(config))
        agent = work / "agent.sock"
        argv = [sys.executable, "-m", "devnet.simulator", "--config", str(work / "simulator.json"),
                "--socket", str(agent)]  # fmt: skip
        self.running.append(
            procs.spawn(argv, name="simulator@fanout", netns=None, log_path=work / "simulator.log")
        )
        procs.wait_for(agent.is_socket, 20.0, what="the indexer's guest agent")
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTESTMESH_", "DSTACK_"))}
        prefix = "ATTESTMESH_INDEXER_"
        env.update(
            {
                f"{prefix}RPC_URL": self.rpc_url,
                f"{prefix}CHAIN_ID": str(self.chain_id),
                f"{prefix}CLUSTER_FACTORY": str(factory),
                f"{prefix}START_BLOCK": str(start_block),
                f"{prefix}LISTEN_ADDR": f"127.0.0.1:{self.port}",
                f"{prefix}POLL_INTERVAL": str(INDEXER_POLL_INTERVAL),
                f"{prefix}CONFIRMATIONS": "0",
                "DSTACK_SIMULATOR_ENDPOINT": str(agent),
            }
        )
        indexer = procs.spawn(
            [sys.executable, "-m", "indexer"], name="indexer@fanout", netns=None,
            log_path=work / "indexer.log", env=env,
        )  # fmt: skip
        self.running.append(indexer)
        return indexer

    async def wait_healthy(self, indexer: procs.ProcRecord) -> None:
        end = time.monotonic() + DEADLINE
        while True:
            try:
                async with self.http.get(f"{self.base}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if not procs.is_alive(indexer) or time.monotonic() > end:
                raise RuntimeError(f"the indexer did not become healthy; see {self.work / 'indexer.log'}")
            await asyncio.sleep(0.05)

    async def rounds(self, clients: list[Client]) -> dict[int, float]:
        """One cluster event per round, each awaited at every subscriber; block → wall-clock mined time."""
        mined: dict[int, float] = {}
        for r in range(ROUNDS):
            round_hash = Bytes32(keccak(b"attestmesh/bench/round" + r.to_bytes(4, "big")))
            receipt = await self.admin.add_compose_hash(round_hash)
            mined[receipt.block_number] = time.time()
            block = receipt.block_number

            def delivered(b: int = block) -> bool:
                return all(b in c.received or c.failure for c in clients)

            await _until(delivered, f"round {r} delivered to every subscriber")
            _check(clients)
        return mined


def _check(clients: Sequence[Client]) -> None:
    failed = [c.failure for c in clients if c.failure]
    if failed:
        raise RuntimeError(f"{len(failed)} subscribers failed, e.g. {failed[0]}")


async def _members(lab: Lab, kms: DevnetKms, pool: ProcessPoolExecutor, factory: Address) -> list[Client]:
    apps = await grow(lab.rpc_url, lab.admin, lab.http, pool, range(SUBSCRIBERS), factory=factory)
    by_identity = {m.identity_pub: m.member_id for m in await lab.admin.members()}
    clients = []
    for i in range(SUBSCRIBERS):
        identity = derive_key(kms.app_key(apps[i]), BENCH_KEYS.path(KeyPath.IDENTITY))
        clients.append(Client(by_identity[Bytes32(ed25519_public_key(identity))], identity))
    return clients


def _latencies(log_file: Path, mined: dict[int, float], clients: Sequence[Client]) -> tuple[list[float], ...]:
    indexed = _indexed_at(log_file)
    seen: list[float] = []
    end_to_end: list[float] = []
    for block, mined_at in mined.items():
        at = min((t for through, t in indexed if through >= block), default=None)
        if at is None:
            raise RuntimeError(f"no follower.logs_indexed line covers block {block}")
        for c in clients:
            seen.append(c.received[block] - at)
            end_to_end.append(c.received[block] - mined_at)
    return seen, end_to_end


async def measure() -> FanoutFigures:
    kms = DevnetKms()
    work = Path(tempfile.mkdtemp(prefix="am-fanout-", dir="/tmp"))
    started = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=max(1, min(2, os.cpu_count() or 1)))
    lab: Lab | None = None
    try:
        async with (
            AnvilProcess() as anvil,
            await connect(anvil.rpc_url) as conn,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,  # 200 sockets at once
        ):
            owner = TxSubmitter(conn, LocalSigner(DEVNET_DEPLOYER_KEY), poll_interval=0.01)
            stack = await deploy_stack(
                conn, owner, kms_roots=(kms.root_address,), compose_hashes=(Bytes32(keccak(b"bench")),)
            )
            admin = ClusterClient(conn, stack.cluster, owner)
            lab = Lab(work, http, anvil.rpc_url, anvil.chain_id, admin, stack.cluster)
            clients = await _members(lab, kms, pool, stack.member_app_factory)
            indexer = lab.start_indexer(stack.cluster_factory, stack.factory_block)
            await lab.wait_healthy(indexer)
            rss_idle, _ = _rss_kib(indexer.pid)
            indexer_pub = Bytes32(ed25519_public_key(derive_key(kms.app_key(INDEXER_APP), key_path(1))))

            # everyone subscribes from the current head: only the rounds' events follow
            head = await conn.block_header("latest")
            start = Cursor.through(head.number, head.hash)
            url = f"ws://127.0.0.1:{lab.port}/v1/subscribe"
            gate = asyncio.Semaphore(int(os.environ.get("FANOUT_HANDSHAKES", HANDSHAKES)))
            tasks = [
                asyncio.create_task(_subscribe(http, url, Stream(stack.cluster, indexer_pub, start, gate), c))
                for c in clients
            ]
            await _until(lambda: all(c.verifier is not None or c.failure for c in clients), "every welcome")
            _check(clients)
            rss_subscribed, _ = _rss_kib(indexer.pid)
            mined = await lab.rounds(clients)
            rss_after, hwm = _rss_kib(indexer.pid)
            async with http.get(f"{lab.base}/metrics") as response:
                mean, p99_bucket = _histogram(await response.text())
            for c in clients:
                if c.ws is not None:
                    await c.ws.close()
            await asyncio.gather(*tasks, return_exceptions=True)
            seen, end_to_end = _latencies(work / "indexer.log", mined, clients)
            return FanoutFigures(
                subscribers=SUBSCRIBERS,
                rounds=ROUNDS,
                deliveries=len(seen),
                seen_to_delivered=seen,
                mined_to_delivered=end_to_end,
                indexer_mean=mean,
                indexer_p99_bucket=p99_bucket,
                rss_idle_kib=rss_idle,
                rss_subscribed_kib=rss_subscribed,
                rss_after_kib=rss_after,
                hwm_kib=hwm,
                setup_s=time.perf_counter() - started,
            )
    finally:
        if lab is not None:
            procs.terminate_all(lab.running)
        pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(work, ignore_errors=True)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_figures(f: FanoutFigures) -> None:
    def ms(v: float) -> str:
        return f"{v * 1000:.1f} ms"

    print(
        f"{f.subscribers} subscribers, {f.rounds} rounds, {f.deliveries} deliveries "
        f"(set-up {f.setup_s:.0f} s)"
    )
    print(
        f"  block seen → delivered: median {ms(statistics.median(f.seen_to_delivered))}, "
        f"p99 {ms(_quantile(f.seen_to_delivered, 0.99))}, max {ms(max(f.seen_to_delivered))}"
    )
    print(f"  indexer's own indexed → written: mean {ms(f.indexer_mean)}, p99 {f.indexer_p99_bucket}")
    print(
        f"  mined → delivered (adds the {INDEXER_POLL_INTERVAL:g} s poll): median "
        f"{ms(statistics.median(f.mined_to_delivered))}, p99 {ms(_quantile(f.mined_to_delivered, 0.99))}"
    )
    print(
        f"  indexer RSS: {f.rss_idle_kib / 1024:.1f} MiB idle, {f.rss_subscribed_kib / 1024:.1f} MiB with "
        f"{f.subscribers} subscribers, {f.rss_after_kib / 1024:.1f} MiB after the rounds "
        f"(peak {f.hwm_kib / 1024:.1f} MiB); "
        f"{(f.rss_subscribed_kib - f.rss_idle_kib) / f.subscribers:.0f} KiB per subscriber"
    )


async def main() -> None:
    runs = []
    for run in range(1, RUNS + 1):
        print(f"run {run}/{RUNS}: ", end="")
        runs.append(await measure())
        print_figures(runs[-1])
    medians = [statistics.median(f.seen_to_delivered) for f in runs]
    p99s = [_quantile(f.seen_to_delivered, 0.99) for f in runs]
    per_subscriber = [(f.rss_subscribed_kib - f.rss_idle_kib) / f.subscribers for f in runs]
    rss = statistics.median(f.rss_subscribed_kib for f in runs) / 1024
    print(
        f"over {RUNS} runs (median of each figure): block seen → delivered median "
        f"{statistics.median(medians) * 1000:.1f} ms, p99 {statistics.median(p99s) * 1000:.1f} ms; "
        f"indexer RSS with {SUBSCRIBERS} subscribers {rss:.1f} MiB "
        f"({statistics.median(per_subscriber):.0f} KiB per subscriber)"
    )
    samples = [s for f in runs for s in f.seen_to_delivered]
    print(
        f"plot: {plots.fanout_latency(samples, plots.Output.path('fanout-latency'), subscribers=SUBSCRIBERS)}"
    )
