"""The dstack guest-agent simulator: the agent's HTTP API on a Unix socket, for the official ``dstack-sdk``.

Owns ``Simulator`` (one simulated CVM: its identity, measurements, in-memory event log and the devnet
KMS it gets keys from), ``create_app`` (the aiohttp application speaking dstack's JSON pRPC: ``POST
/<Method>`` with ``Content-Type: application/json``, or ``GET /<Method>?field=value``) and ``serve_unix``.
The contract it honours is dstack.md §2.2 to §2.4 and §3.3:

- responses carry bytes as lowercase hex without ``0x``; requests may add ``0x``;
- every error is a JSON ``{"error": …}``: client mistakes are 400 (unknown method 404, wrong HTTP verb
  405, oversized body 413), never a 500 and never an empty body; the server keeps serving;
- ``GetKey`` is dstack's derivation over the devnet KMS (``devnet.kms``), with a real signature chain;
- ``GetQuote``/``Attest`` return DEVELOPMENT quotes (``devnet.simulator.quote``), not TDX quotes;
- ``EmitEvent`` is supported (dstack 0.5.x semantics): it appends a runtime event and extends RTMR3,
  visible in later ``Info`` and quotes. ``mr_aggregated`` uses the boot-time RTMR3 (up to
  ``boot-mr-done``), so it stays stable as events are emitted, as the KMS sees it;
- ``Sign``/``Verify`` follow dstack ≥ 0.5.6 (key of GetKey path ``vms``, purpose ``signing``);
- ``GetTlsKey`` is refused with 400: the devnet has no KMS CA, and AttestMesh uses GetKey keys only.
  A fake certificate chain would only invite code that trusts it.

Must not: log key material or put it (or any request value) into an error message; write anything to
disk except its own socket; touch the network beyond that socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eth_keys.datatypes import NonRecoverableSignature, PrivateKey, PublicKey
from eth_keys.exceptions import BadSignature
from eth_utils.exceptions import ValidationError

from devnet.kms import DevnetKms, derived_public_key, get_key
from devnet.simulator.config import ConfigError, SimulatorConfig
from devnet.simulator.quote import (
    DevQuote,
    EventLogEntry,
    ReportDataTooLongError,
    boot_event_log,
    boot_time_rtmr3,
    encode_dev_quote,
    fake_mrtd,
    mr_aggregated,
    pad_report_data,
    parse_hex,
    replay_event_log,
)

log = logging.getLogger(__name__)

SIGN_PATH = "vms"
SIGN_PURPOSE = "signing"
MAX_RUNTIME_EVENTS = 4096
MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32
UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
CLOUD_VENDOR = "attestmesh-devnet"
CLOUD_PRODUCT = "simulator"
UNSUPPORTED_SIGN_ALGORITHM = "unsupported algorithm (expected ed25519, secp256k1 or secp256k1_prehashed)"
TLS_KEY_UNSUPPORTED = "GetTlsKey is not supported by the devnet simulator"

_MISSING: Final = object()


class BadRequestError(Exception):
    """A client mistake; the message is safe to return (it names fields, never their values)."""


class Params:
    """The fields of one request (JSON object or query string), with typed, value-free errors."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self._fields = fields

    def string(self, name: str, default: str | object = _MISSING) -> str:
        value = self._fields.get(name, default)
        if value is _MISSING:
            raise BadRequestError(f"missing field {name!r}")
        if not isinstance(value, str):
            raise BadRequestError(f"field {name!r} must be a string")
        return value

    def hex(self, name: str, default: str | object = _MISSING) -> bytes:
        try:
            return parse_hex(self.string(name, default), f"field {name!r}")
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclass(slots=True)
class Simulator:
    """One simulated CVM: public identity and measurements, its event log, and the devnet KMS."""

    config: SimulatorConfig
    kms: DevnetKms
    app_compose: bytes
    app_name: str
    mrtd: bytes
    events: list[EventLogEntry]
    boot_event_count: int
    key_provider_info: str
    vm_config: str
    runtime_events_emitted: int = field(default=0)

    @classmethod
    def from_config(cls, config: SimulatorConfig, kms: DevnetKms) -> Simulator:
        """Read the node's app-compose.json (its exact bytes) and build the boot state."""
        try:
            compose = config.app_compose_path.read_bytes()
            compose.decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {config.app_compose_path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{config.app_compose_path} is not UTF-8 text") from None
        app_name = config.app_name if config.app_name is not None else _compose_name(compose)
        key_provider_info = _canonical_json({"name": "kms", "id": kms.root_public_key.hex()})
        events = boot_event_log(
            measurement_seed=config.effective_measurement_seed,
            app_id=config.app_id.raw,
            compose_hash=hashlib.sha256(compose).digest(),
            instance_id=config.instance_id,
            os_image_hash=config.os_image_hash.raw,
            key_provider=key_provider_info.encode(),
        )
        vm_config = _canonical_json(
            {
                "spec_version": 1,
                "os_image_hash": config.os_image_hash.hex,
                "cpu_count": config.cpu_count,
                "memory_size": config.memory_size,
                "qemu_single_pass_add_pages": False,
                "pic": False,
                "pci_hole64_size": 0,
                "hugepages": False,
                "num_gpus": 0,
                "num_nvswitches": 0,
                "hotplug_off": True,
            }
        )
        return cls(
            config=config,
            kms=kms,
            app_compose=compose,
            app_name=app_name,
            mrtd=fake_mrtd(config.effective_measurement_seed),
            events=events,
            boot_event_count=len(events),
            key_provider_info=key_provider_info,
            vm_config=vm_config,
        )

    # --- derived state ---------------------------------------------------------------------------

    @property
    def compose_hash(self) -> bytes:
        return hashlib.sha256(self.app_compose).digest()

    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return replay_event_log(self.events)

    def mr_aggregated(self) -> bytes:
        r0, r1, r2, _ = self.rtmrs()
        return mr_aggregated(self.mrtd, r0, r1, r2, boot_time_rtmr3(self.events))

    def event_log_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.events]

    def dev_quote(self, report_data: bytes) -> DevQuote:
        r0, r1, r2, r3 = self.rtmrs()
        return DevQuote(
            report_data=pad_report_data(report_data),
            mrtd=self.mrtd,
            rtmr0=r0,
            rtmr1=r1,
            rtmr2=r2,
            rtmr3=r3,
            app_id=self.config.app_id.raw,
            compose_hash=self.compose_hash,
            instance_id=self.config.instance_id,
            device_id=self.config.effective_device_id.raw,
            os_image_hash=self.config.os_image_hash.raw,
            tcb_status=self.config.tcb_status,
        )

    # --- methods ---------------------------------------------------------------------------------

    def get_key(self, p: Params) -> dict[str, Any]:
        path = p.string("path")
        purpose = p.string("purpose", "")
        algorithm = p.string("algorithm", "secp256k1") or "secp256k1"
        try:
            key, chain = get_key(self.kms, self.config.app_id, path, purpose, algorithm)
        except ValueError:
            raise BadRequestError("unsupported algorithm (expected secp256k1, k256 or ed25519)") from None
        return {"key": key.reveal().hex(), "signature_chain": [sig.hex() for sig in chain]}

    def _quote_input(self, p: Params) -> bytes:
        data = p.hex("report_data")
        try:
            return pad_report_data(data)
        except ReportDataTooLongError as exc:
            raise BadRequestError(str(exc)) from None

    def get_quote(self, p: Params) -> dict[str, Any]:
        report_data = self._quote_input(p)
        return {
            "quote": encode_dev_quote(self.dev_quote(report_data)).hex(),
            "event_log": json.dumps(self.event_log_json()),
            "report_data": report_data.hex(),
            "vm_config": self.vm_config,
        }

    def attest(self, p: Params) -> dict[str, Any]:
        return {"attestation": encode_dev_quote(self.dev_quote(self._quote_input(p))).hex()}

    def info(self, _: Params) -> dict[str, Any]:
        r0, r1, r2, r3 = self.rtmrs()
        aggregated = self.mr_aggregated().hex()
        tcb_info = {
            "mrtd": self.mrtd.hex(),
            "rtmr0": r0.hex(),
            "rtmr1": r1.hex(),
            "rtmr2": r2.hex(),
            "rtmr3": r3.hex(),
            "mr_aggregated": aggregated,
            "os_image_hash": self.config.os_image_hash.hex,
            "compose_hash": self.compose_hash.hex(),
            "device_id": self.config.effective_device_id.hex,
            "event_log": self.event_log_json(),
            "app_compose": self.app_compose.decode("utf-8"),
        }
        return {
            "app_id": self.config.app_id.hex,
            "instance_id": self.config.instance_id.hex(),
            "app_cert": "",
            "tcb_info": json.dumps(tcb_info),
            "app_name": self.app_name,
            "device_id": self.config.effective_device_id.hex,
            "mr_aggregated": aggregated,
            "os_image_hash": self.config.os_image_hash.hex,
            "key_provider_info": self.key_provider_info,
            "compose_hash": self.compose_hash.hex(),
            "vm_config": self.vm_config,
            "cloud_vendor": CLOUD_VENDOR,
            "cloud_product": CLOUD_PRODUCT,
        }

    def emit_event(self, p: Params) -> dict[str, Any]:
        name = p.string("event")
        payload = p.hex("payload", "")
        if not name:
            raise BadRequestError("field 'event' must not be empty")
        if self.runtime_events_emitted >= MAX_RUNTIME_EVENTS:
            raise BadRequestError(f"event log is full ({MAX_RUNTIME_EVENTS} runtime events)")
        self.events.append(EventLogEntry.runtime(name, payload))
        self.runtime_events_emitted += 1
        log.info("simulator.event_emitted event=%r payload_bytes=%d", name[:64], len(payload))
        return {}

    def version(self, _: Params) -> dict[str, Any]:
        return {"version": self.config.version, "rev": self.config.rev}

    def sign(self, p: Params) -> dict[str, Any]:
        algorithm = p.string("algorithm")
        data = p.hex("data")
        if algorithm == "ed25519":
            key, chain = get_key(self.kms, self.config.app_id, SIGN_PATH, SIGN_PURPOSE, "ed25519")
            signature = Ed25519PrivateKey.from_private_bytes(key.reveal()).sign(data)
            public_key = derived_public_key(key, "ed25519")
        elif algorithm in ("secp256k1", "secp256k1_prehashed"):
            if algorithm == "secp256k1_prehashed" and len(data) != 32:
                raise BadRequestError("secp256k1_prehashed requires exactly 32 bytes of data")
            digest = data if algorithm == "secp256k1_prehashed" else hashlib.sha256(data).digest()
            key, chain = get_key(self.kms, self.config.app_id, SIGN_PATH, SIGN_PURPOSE, "secp256k1")
            signature = bytes(PrivateKey(key.reveal()).sign_msg_hash(digest).to_bytes())[:64]
            public_key = derived_public_key(key, "secp256k1")
        else:
            raise BadRequestError(UNSUPPORTED_SIGN_ALGORITHM)
        return {
            "signature": signature.hex(),
            "signature_chain": [signature.hex(), chain[0].hex(), chain[1].hex()],
            "public_key": public_key.hex(),
        }

    def verify(self, p: Params) -> dict[str, Any]:
        algorithm = p.string("algorithm")
        data = p.hex("data")
        signature = p.hex("signature")
        public_key = p.hex("public_key")
        if algorithm == "ed25519":
            if len(public_key) != 32 or len(signature) != 64:
                raise BadRequestError("ed25519 needs a 32-byte public key and a 64-byte signature")
            try:
                Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
            except (InvalidSignature, ValueError):
                return {"valid": False}
            return {"valid": True}
        if algorithm in ("secp256k1", "secp256k1_prehashed"):
            if len(public_key) != 33 or len(signature) != 64:
                raise BadRequestError(
                    "secp256k1 needs a 33-byte compressed public key and a 64-byte signature"
                )
            if algorithm == "secp256k1_prehashed" and len(data) != 32:
                raise BadRequestError("secp256k1_prehashed requires exactly 32 bytes of data")
            digest = data if algorithm == "secp256k1_prehashed" else hashlib.sha256(data).digest()
            try:
                pub = PublicKey.from_compressed_bytes(public_key)
            except (ValidationError, ValueError, BadSignature):
                raise BadRequestError("public_key is not a compressed secp256k1 point") from None
            try:
                sig = NonRecoverableSignature(signature)
            except (ValidationError, ValueError, BadSignature):
                return {"valid": False}
            return {"valid": bool(sig.verify_msg_hash(digest, pub))}
        raise BadRequestError(UNSUPPORTED_SIGN_ALGORITHM)

    def get_tls_key(self, _: Params) -> dict[str, Any]:
        raise BadRequestError(TLS_KEY_UNSUPPORTED)

    def gpu_info(self, _: Params) -> dict[str, Any]:
        return {"attestation": ""}


def _compose_name(compose: bytes) -> str:
    try:
        obj = json.loads(compose)
    except ValueError:
        return ""
    name = obj.get("name") if isinstance(obj, dict) else None
    return name if isinstance(name, str) else ""


METHODS: Final[Mapping[str, Callable[[Simulator, Params], dict[str, Any]]]] = {
    "GetKey": Simulator.get_key,
    "GetQuote": Simulator.get_quote,
    "Attest": Simulator.attest,
    "Info": Simulator.info,
    "EmitEvent": Simulator.emit_event,
    "Version": Simulator.version,
    "Sign": Simulator.sign,
    "Verify": Simulator.verify,
    "GetTlsKey": Simulator.get_tls_key,
    "GpuInfo": Simulator.gpu_info,
}

SIMULATOR_KEY: Final = web.AppKey("simulator", Simulator)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, dumps=lambda o: json.dumps(o, indent=2))


@web.middleware
async def _json_errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except BadRequestError as exc:
        log.debug("simulator.request_rejected path=%s reason=%s", request.path[:80], exc)
        return _error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception as exc:
        # Only the type: a message could in principle carry data we must not log.
        log.error("simulator.request_failed path=%s error=%s", request.path[:80], type(exc).__name__)
        return _error(500, "internal error")
    return response


# A complete JSON string, a lone (unterminated) quote, or a bracket. Scanning stops at a lone quote, so
# the pass is linear: after an unterminated string nothing can be valid JSON.
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|"|[\[\]{}]', re.DOTALL)


def json_nesting_depth(body: bytes, limit: int = sys.maxsize) -> int:
    """Return the deepest bracket nesting of a JSON text, ignoring brackets inside strings.

    Stops counting once the depth exceeds ``limit``. An unterminated string counts as unbounded depth
    (the text is not JSON anyway).
    """
    depth = deepest = 0
    for match in _JSON_TOKEN.finditer(body):
        token = match.group()
        if token == b'"':
            return sys.maxsize
        if token in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


async def _read_params(request: web.Request) -> Params:
    if request.method == "GET":
        query = request.query
        for key in query:
            if len(query.getall(key)) > 1:
                raise BadRequestError(f"query field {key[:64]!r} is repeated")
        return Params(dict(query))
    body = await request.read()
    if not body.strip():
        return Params({})
    if request.content_type != "application/json" and "json" not in request.query:
        raise BadRequestError("request body must be JSON (send Content-Type: application/json)")
    if json_nesting_depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        # CPython's C JSON scanner can overflow the C stack on deep nesting: refuse before parsing.
        raise BadRequestError(f"request body is not valid JSON (nested deeper than {MAX_JSON_DEPTH})")
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequestError("request body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise BadRequestError("request body must be a JSON object")
    return Params(obj)


async def _dispatch(request: web.Request) -> web.Response:
    name = request.match_info["method"]
    method = METHODS.get(name)
    if method is None:
        return _error(404, f"unknown method {name[:64]!r}")
    if request.method not in ("GET", "POST"):
        return _error(405, f"method {name} accepts GET or POST")
    params = await _read_params(request)
    return web.json_response(method(request.app[SIMULATOR_KEY], params))


def create_app(simulator: Simulator) -> web.Application:
    """Return the aiohttp application serving ``simulator``."""
    app = web.Application(middlewares=[_json_errors], client_max_size=MAX_BODY_BYTES)
    app[SIMULATOR_KEY] = simulator
    app.router.add_route("*", "/{method}", _dispatch)
    return app


@dataclass(slots=True)
class RunningSimulator:
    """A simulator serving on a Unix socket; ``close()`` stops it and removes the socket."""

    socket_path: Path
    simulator: Simulator
    runner: web.AppRunner
    _inode: int

    async def close(self) -> None:
        await self.runner.cleanup()
        _remove_socket(self.socket_path, self._inode)
        log.info("simulator.stopped socket=%s", self.socket_path)


def _socket_inode(path: Path) -> int | None:
    """Return the inode of the socket at ``path``, None if nothing is there; refuse non-sockets."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
    return st.st_ino


def _remove_socket(path: Path, inode: int | None) -> None:
    """Unlink the socket at ``path`` if it is still the one with ``inode`` (never someone else's)."""
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if stat.S_ISSOCK(st.st_mode) and (inode is None or st.st_ino == inode):
            path.unlink()


async def _clear_stale_socket(path: Path) -> None:
    inode = _socket_inode(path)
    if inode is None:
        return
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout=1.0)
    except (ConnectionRefusedError, FileNotFoundError):
        _remove_socket(path, inode)  # a socket nobody listens on: left over from a killed run
        return
    except (TimeoutError, OSError) as exc:
        raise FileExistsError(f"{path} is a socket in an unknown state ({type(exc).__name__})") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    raise FileExistsError(f"{path} is in use by another server")


async def serve_unix(
    socket_path: str | os.PathLike[str],
    config: SimulatorConfig,
    *,
    kms: DevnetKms | None = None,
) -> RunningSimulator:
    """Start serving the simulator for ``config`` on a Unix socket at ``socket_path``."""
    path = Path(socket_path)
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ValueError(f"socket path is longer than {UNIX_PATH_MAX} bytes: {path}")
    simulator = Simulator.from_config(config, kms if kms is not None else DevnetKms())
    await _clear_stale_socket(path)
    runner = web.AppRunner(create_app(simulator), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.UnixSite(runner, str(path)).start()
    except BaseException:
        await runner.cleanup()
        raise
    inode = _socket_inode(path)
    if inode is None:
        await runner.cleanup()
        raise FileNotFoundError(f"socket {path} vanished right after it was created")
    log.info(
        "simulator.started socket=%s app_id=%s compose_hash=%s kms_root=%s",
        path,
        config.app_id,
        simulator.compose_hash.hex(),
        simulator.kms.root_address,
    )
    return RunningSimulator(path, simulator, runner, inode)


__all__ = [
    "MAX_RUNTIME_EVENTS",
    "METHODS",
    "TLS_KEY_UNSUPPORTED",
    "BadRequestError",
    "Params",
    "RunningSimulator",
    "Simulator",
    "create_app",
    "serve_unix",
]
