"""The devnet chain: one anvil process we start, wait for, and stop.

Owns: ``AnvilProcess`` (argv from the pinned binary ``tools/node_modules/.bin/anvil`` or
``$ATTESTMESH_ANVIL``; host, port — 0 picks a free one, read back from anvil's "Listening on" line —
chain id, block time (interval mining, optionally mixed with mining each transaction at once) or automine,
optional network namespace, log file), readiness (anvil logs
"Listening on" and ``eth_chainId`` answers with our chain id before a deadline; inside a namespace only the
log line, since the lab address may not be routable from here; if anvil exits, the error carries its log
tail) and a bounded stop (SIGTERM, wait up to 5 s, SIGKILL) through ``devnet.procs``, so only the process
we started can ever be signalled. Also ``DEVNET_DEPLOYER_KEY`` and anvil's other published dev keys.

Must not: signal any PID it did not start, bind or probe anything but the address it was given (loopback or
a lab address inside a namespace), or hold any key that is not one of anvil's published dev keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from devnet import procs
from sidecar.core.ids import SecretBytes

ANVIL_ENV = "ATTESTMESH_ANVIL"
DEFAULT_CHAIN_ID = 31337
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

#: anvil's dev account 0 (mnemonic "test test ... junk"). A PUBLIC key printed by every anvil and
#: documented by Foundry: it funds and owns devnet contracts and protects nothing. Never use it elsewhere.
DEVNET_DEPLOYER_KEY = SecretBytes(
    bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
)

#: The other published anvil dev keys (accounts 1..9), equally public; handy as distinct funded senders.
DEVNET_DEV_KEYS = tuple(
    SecretBytes(bytes.fromhex(k))
    for k in (
        "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
        "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
        "7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
        "47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    )
)

_LISTENING = re.compile(rb"Listening on (\S+):(\d+)")


class AnvilError(RuntimeError):
    """anvil could not be started or did not become ready; the message carries its log tail."""


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def anvil_binary() -> str:
    """Return the anvil executable: ``$ATTESTMESH_ANVIL`` or the repository's pinned npm binary."""
    override = os.environ.get(ANVIL_ENV)
    if override:
        return override
    return str(repo_root() / "tools" / "node_modules" / ".bin" / "anvil")


def _tail(path: Path, offset: int, lines: int = 20) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty log>"


class AnvilProcess:
    """One anvil we own. ``start()`` returns once ``eth_chainId`` answers; ``stop()`` is bounded."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        chain_id: int = DEFAULT_CHAIN_ID,
        block_time: float | None = None,
        no_mining: bool = False,
        mixed_mining: bool = False,
        netns: str | None = None,
        log_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
        name: str = "anvil",
    ) -> None:
        self.host = host
        self.port = port
        self.chain_id = chain_id
        self.block_time = block_time
        self.no_mining = no_mining
        self.mixed_mining = mixed_mining
        self.netns = netns
        self.name = name
        self.extra_args = extra_args
        self._own_log = log_path is None
        self.log_path = log_path
        self.record: procs.ProcRecord | None = None

    def argv(self) -> list[str]:
        """Return the anvil command line (without the ``ip netns exec`` prefix)."""
        argv = [
            anvil_binary(),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
        ]
        if self.no_mining:
            argv.append("--no-mining")
        elif self.block_time is not None:
            argv += ["--block-time", f"{self.block_time:g}"]
            if self.mixed_mining:  # each transaction mined at once too, not only on the interval
                argv.append("--mixed-mining")
        return argv + list(self.extra_args)

    @property
    def pid(self) -> int | None:
        return None if self.record is None else self.record.pid

    @property
    def rpc_url(self) -> str:
        if self.port == 0:
            raise AnvilError("anvil is not started: its port is not known yet")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.record is not None and procs.is_alive(self.record)

    def start(self, timeout: float = READY_TIMEOUT) -> Self:
        """Start anvil and wait until it answers ``eth_chainId`` with our chain id."""
        if self.record is not None:
            raise AnvilError(f"{self.name} is already started (pid {self.record.pid})")
        if self.log_path is None:
            fd, path = tempfile.mkstemp(prefix=f"attestmesh-{self.name}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(path)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            self.record = procs.spawn(self.argv(), name=self.name, netns=self.netns, log_path=self.log_path)
        except procs.ProcError as exc:
            self.stop()  # nothing to signal; removes our temporary log
            raise AnvilError(str(exc)) from exc
        try:
            self._wait_ready(offset, time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, offset: int, deadline: float) -> None:
        assert self.record is not None and self.log_path is not None
        while True:
            if not procs.is_alive(self.record):
                raise AnvilError(f"{self.name} exited during start-up:\n{_tail(self.log_path, offset)}")
            if self.port == 0:
                self._read_port(offset)
            if self.port != 0 and self._listening(offset) and self._answers():
                return
            if time.monotonic() >= deadline:
                raise AnvilError(f"{self.name} not ready in time:\n{_tail(self.log_path, offset)}")
            time.sleep(0.02)

    def _read_port(self, offset: int) -> None:
        assert self.log_path is not None
        with self.log_path.open("rb") as log:
            log.seek(offset)
            match = _LISTENING.search(log.read())
        if match:
            self.port = int(match.group(2))

    def _listening(self, offset: int) -> bool:
        assert self.log_path is not None
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return _LISTENING.search(log.read()) is not None

    def _answers(self) -> bool:
        """Ask ``eth_chainId`` (skipped inside a namespace: the address may not be routable from here)."""
        if self.netns is not None:
            return True
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(self.rpc_url, data=body, headers=headers)  # noqa: S310 - http only
        try:
            with urllib.request.urlopen(request, timeout=1.0) as response:  # noqa: S310 - http only
                answer = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False
        result = answer.get("result")
        if isinstance(result, str) and int(result, 16) != self.chain_id:
            raise AnvilError(f"{self.rpc_url} answers chain id {int(result, 16)}, expected {self.chain_id}")
        return isinstance(result, str)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM anvil, wait up to ``timeout`` s, then SIGKILL. Idempotent; touches only our process."""
        record, self.record = self.record, None
        if record is not None:
            procs.terminate(record, timeout)
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    async def start_async(self, ready_within: float = READY_TIMEOUT) -> Self:
        """``start()`` without blocking the event loop."""
        return await asyncio.to_thread(self.start, ready_within)

    async def stop_async(self, grace: float = STOP_TIMEOUT) -> None:
        """``stop()`` without blocking the event loop (anvil can take about a second to exit)."""
        await asyncio.to_thread(self.stop, grace)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.start_async()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop_async()

    def __repr__(self) -> str:
        where = f" in {self.netns}" if self.netns else ""
        return f"AnvilProcess({self.host}:{self.port}{where}, pid={self.pid})"
