"""A lying JSON-RPC provider for the lab and the tests: a real aiohttp server that forwards every request to
an upstream (the lab's anvil) and rewrites chosen answers.

Owns ``Lies`` (what to rewrite, loaded from a rules JSON object), ``RpcProxy`` (the server, its recorded
calls, its control endpoint) and the command line ``python -m devnet.rpcproxy --listen HOST:PORT --upstream
URL --rules FILE``. The lies, each off unless set:

- ``members``: ``ICluster.Member`` records appended to the answer of ``members()`` of ``cluster`` and to
  the last page of ``membersPage(offset, limit)`` (its total and ``syncState()``'s member count grow to
  match); decoded with the artifact's ABI, appended, re-encoded; calls pinned to a block hash alike;
- ``csk_commitment``: what ``cskCommitment()``, ``cskCommitmentOf(uint64)`` and ``syncState()``'s
  commitment of ``cluster`` answer;
- ``block_hash``: the ``hash`` of every block header answered (``eth_getBlockByNumber`` / ``ByHash``);
- ``max_priority_fee`` / ``base_fee`` (wei): the quoted tip, and the ``baseFeePerGas`` of block headers.

The rules file is re-read whenever its content changes (checked on each request), and
``PUT /_proxy/rules`` replaces the lies; ``GET /_proxy/calls`` answers the recorded calls per method.
Test tooling, never part of a node: it must not run outside a lab or a test, and it trusts its rules file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from eth_abi.abi import decode, encode
from eth_utils.crypto import keccak

from sidecar.chain.artifacts import load_artifact

log = logging.getLogger("devnet.rpcproxy")

CONTROL = "/_proxy"
MAX_RECORDED = 20_000
_ABI = {f["name"]: f for f in load_artifact("Cluster").abi_list() if f.get("type") == "function"}
_COMPONENTS = _ABI["members"]["outputs"][0]["components"]
MEMBER_FIELDS = tuple(str(c["name"]) for c in _COMPONENTS)
MEMBER_TYPES = tuple(str(c["type"]) for c in _COMPONENTS)
MEMBERS_TYPES = [f"({','.join(MEMBER_TYPES)})[]"]


def _selector(name: str) -> str:
    inputs = ",".join(str(i["type"]) for i in _ABI[name]["inputs"])
    return "0x" + keccak(text=f"{name}({inputs})")[:4].hex()


SELECTORS = {
    name: _selector(name)
    for name in ("members", "membersPage", "syncState", "cskCommitment", "cskCommitmentOf")
}
PAGE_TYPES = [MEMBERS_TYPES[0], "uint256"]
SYNC_TYPES = ["uint64", "uint64", "uint64", "bytes32", "uint256"]


class RulesError(ValueError):
    """The rules object is not valid (the message names every problem)."""


def member_tuple(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """An ``ICluster.Member`` as ``eth_abi`` encodes it, from its JSON form (ABI field names; bytes as
    0x-hex, ``meshIp`` dotted or an integer)."""
    if set(record) != set(MEMBER_FIELDS):
        raise RulesError(f"a member record needs exactly the keys {', '.join(MEMBER_FIELDS)}")
    values: list[Any] = []
    for name, typ in zip(MEMBER_FIELDS, MEMBER_TYPES, strict=True):
        value = record[name]
        if typ == "bytes32":
            values.append(bytes.fromhex(str(value).removeprefix("0x")))
        elif name == "meshIp":
            values.append(int(IPv4Address(value)) if isinstance(value, str) else int(value))
        elif typ.startswith("uint"):
            values.append(int(value))
        else:
            values.append(str(value))
    return tuple(values)


@dataclass(frozen=True, slots=True)
class Lies:
    """What the proxy rewrites (nothing by default)."""

    cluster: str | None = None  # the Cluster whose views are rewritten (None: any eth_call target)
    members: tuple[Mapping[str, Any], ...] = ()
    csk_commitment: str | None = None
    block_hash: str | None = None
    max_priority_fee: int | None = None
    base_fee: int | None = None

    @classmethod
    def from_json(cls, data: object) -> Lies:
        if not isinstance(data, dict):
            raise RulesError("the rules must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RulesError(f"unknown rules {unknown}; known: {sorted(known)}")
        members = tuple(data.get("members") or ())
        for record in members:
            member_tuple(record)  # validated now, not at the first call
        return cls(**{**data, "members": members})

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"members": list(self.members)}


@dataclass
class RpcProxy:
    """Forwards JSON-RPC to ``upstream``; records ``(method, params)``; lies as ``lies`` says."""

    upstream: str
    lies: Lies = field(default_factory=Lies)
    rules_file: Path | None = None
    path: str = "/"
    requests: deque[tuple[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_RECORDED))
    host: str = "127.0.0.1"
    port: int = 0
    _rules_text: str | None = None
    _runner: web.AppRunner | None = None
    _http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get(f"{CONTROL}/calls", self._calls)
        app.router.add_put(f"{CONTROL}/rules", self._put_rules)
        app.router.add_post("/{tail:.*}", self._handle)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._http = aiohttp.ClientSession()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.host = host
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.reload()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    def reload(self) -> None:
        """Re-read the rules file when its content changed since the last read (a small file, read on each
        request: timestamps are too coarse for a test that rewrites it quickly); a bad file keeps the last
        lies, no file means none."""
        if self.rules_file is None:
            return
        try:
            text: str | None = self.rules_file.read_text()
        except FileNotFoundError:
            text = None
        if text == self._rules_text:
            return
        self._rules_text = text
        try:
            self.lies = Lies() if text is None else Lies.from_json(json.loads(text))
        except ValueError as exc:
            log.warning("rpcproxy.rules_rejected error=%s", exc)
            return
        log.info("rpcproxy.rules_loaded rules=%s", json.dumps(self.lies.to_json()))

    def calls(self, method: str) -> list[Any]:
        return [params for name, params in self.requests if name == method]

    async def _calls(self, _: web.Request) -> web.Response:
        return web.json_response(dict(Counter(name for name, _ in self.requests)))

    async def _put_rules(self, request: web.Request) -> web.Response:
        try:
            self.lies = Lies.from_json(await request.json())
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.lies.to_json())

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._http is not None
        self.reload()
        body = await request.json()
        async with self._http.post(self.upstream, json=body) as upstream:
            answer = await upstream.json()
        if isinstance(body, list) and isinstance(answer, list):
            answer = [self._answer(call, reply) for call, reply in zip(body, answer, strict=False)]
        elif isinstance(body, dict) and isinstance(answer, dict):
            answer = self._answer(body, answer)
        return web.json_response(answer)

    def _answer(self, call: Mapping[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        method, params = str(call.get("method")), call.get("params") or []
        self.requests.append((method, params))
        if "result" in answer and answer["result"] is not None:
            answer = {**answer, "result": self._lie(method, params, answer["result"])}
        return answer

    def _lie(self, method: str, params: Sequence[Any], result: Any) -> Any:
        lies = self.lies
        if method == "eth_call" and params and isinstance(params[0], dict):
            return self._lie_call(params[0], result)
        if method == "eth_maxPriorityFeePerGas" and lies.max_priority_fee is not None:
            return hex(lies.max_priority_fee)
        if method in ("eth_getBlockByNumber", "eth_getBlockByHash") and isinstance(result, dict):
            if lies.block_hash is not None:
                result = {**result, "hash": lies.block_hash}
            if lies.base_fee is not None:
                result = {**result, "baseFeePerGas": hex(lies.base_fee)}
        return result

    def _lie_call(self, tx: Mapping[str, Any], result: Any) -> Any:
        lies = self.lies
        if lies.cluster is not None and str(tx.get("to", "")).lower() != lies.cluster.lower():
            return result
        data = str(tx.get("data") or tx.get("input") or "")
        extra = [member_tuple(m) for m in lies.members]
        if extra and data.startswith(SELECTORS["members"]):
            (records,) = decode(MEMBERS_TYPES, bytes.fromhex(result[2:]))
            return "0x" + encode(MEMBERS_TYPES, [[*records, *extra]]).hex()
        if extra and data.startswith(SELECTORS["membersPage"]):  # the extra records follow the real ones
            offset, limit = decode(["uint256", "uint256"], bytes.fromhex(data[10:]))
            records, total = decode(PAGE_TYPES, bytes.fromhex(result[2:]))
            shown = (
                [*records, *extra[max(0, offset - total) :]][:limit]
                if offset + len(records) >= total
                else records
            )
            return "0x" + encode(PAGE_TYPES, [list(shown), total + len(extra)]).hex()
        commitment = None
        if lies.csk_commitment is not None:
            commitment = bytes.fromhex(lies.csk_commitment.removeprefix("0x")).rjust(32, b"\0")
        if data.startswith(SELECTORS["syncState"]) and (extra or commitment is not None):
            version, policy, epoch, held, count = decode(SYNC_TYPES, bytes.fromhex(result[2:]))
            answer = [version, policy, epoch, commitment or held, count + len(extra)]
            return "0x" + encode(SYNC_TYPES, answer).hex()
        commitment_views = (SELECTORS["cskCommitment"], SELECTORS["cskCommitmentOf"])
        if commitment is not None and data.startswith(commitment_views):
            return "0x" + commitment.hex()
        return result


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, not {text!r}")
    return host, int(port)


async def _serve(args: argparse.Namespace) -> None:
    proxy = RpcProxy(args.upstream, rules_file=args.rules)
    host, port = args.listen
    await proxy.start(host, port)
    log.info("rpcproxy.listening url=%s upstream=%s", proxy.url, args.upstream)
    sys.stdout.write(f"rpcproxy listening on {proxy.url}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await proxy.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devnet.rpcproxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=_listen, required=True, help="HOST:PORT to serve JSON-RPC on")
    parser.add_argument("--upstream", required=True, help="the honest JSON-RPC URL (the lab's anvil)")
    parser.add_argument("--rules", type=Path, default=None, help="rules JSON file, re-read when it changes")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level="INFO", stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
