"""Development quotes, the synthetic event log and RTMR replay for the guest-agent simulator (pure).

Owns:
- the wire helpers the simulator shares with its tests: lenient hex parsing (optional ``0x``) and
  ``pad_report_data`` (≤ 64 bytes, right-padded with zeros, as ``GetQuote`` does);
- the event log: ``EventLogEntry``, dstack V1 runtime-event digests
  ``sha384(u32_le(0x08000001) ‖ ":" ‖ name ‖ ":" ‖ payload)`` and RTMR replay
  (``mr = 48 zero bytes; mr = sha384(mr ‖ digest)`` per event of that IMR), dstack.md §7.3;
- ``boot_event_log``: a self-consistent boot log (one synthetic measurement event in each of IMR 0-2,
  then the dstack runtime boot events in IMR 3) whose replay *defines* RTMR0-3, so any verifier that
  replays the log reproduces the quoted registers;
- the DEVELOPMENT quote: ``DEV_QUOTE_MAGIC`` followed by canonical JSON (sorted keys, no spaces) of
  ``DevQuote``. It carries no signature and is not a TDX quote; a verifier must refuse it anywhere but the
  devnet. ``parse_dev_quote`` is the inverse of ``encode_dev_quote``.

Must not: do I/O, hold key material, or pretend to be Intel-signed.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

DEV_QUOTE_MAGIC = b"ATTESTMESH-DEVNET-DEV-QUOTE\x00v1"
DEV_QUOTE_FORMAT = "attestmesh-devnet-dev-quote/v1"
RUNTIME_EVENT_TYPE = 0x08000001
SYNTHETIC_EVENT_TYPE = 0x00000006  # EV_EVENT_TAG: the devnet's stand-in for firmware/kernel measurements
REPORT_DATA_BYTES = 64
MR_BYTES = 48
INIT_MR = bytes(MR_BYTES)

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


class DevQuoteError(ValueError):
    """A byte string is not a well-formed devnet development quote."""


class ReportDataTooLongError(ValueError):
    """More than 64 bytes of report data were given."""

    def __init__(self, length: int) -> None:
        super().__init__(f"report data is too long ({length} bytes, at most {REPORT_DATA_BYTES})")


def parse_hex(text: str, what: str) -> bytes:
    """Decode hex with an optional ``0x`` prefix; the error names ``what`` but never echoes the value."""
    body = text[2:] if text[:2] in ("0x", "0X") else text
    if not _HEX.fullmatch(body):
        raise ValueError(f"{what} is not an even-length hex string")
    return bytes.fromhex(body)


def pad_report_data(data: bytes) -> bytes:
    """Right-pad report data with zeros to 64 bytes; refuse more than 64 bytes."""
    if len(data) > REPORT_DATA_BYTES:
        raise ReportDataTooLongError(len(data))
    return data.ljust(REPORT_DATA_BYTES, b"\x00")


def runtime_event_digest(name: str, payload: bytes) -> bytes:
    """Return the dstack V1 digest of a runtime (IMR 3) event."""
    preimage = struct.pack("<I", RUNTIME_EVENT_TYPE) + b":" + name.encode() + b":" + payload
    return hashlib.sha384(preimage).digest()


def extend(mr: bytes, digest: bytes) -> bytes:
    """Return the register value after extending ``mr`` with ``digest``."""
    return hashlib.sha384(mr + digest).digest()


def replay_rtmr(digests: Iterable[bytes]) -> bytes:
    """Replay a sequence of digests from the 48 zero bytes every RTMR starts at."""
    mr = INIT_MR
    for digest in digests:
        mr = extend(mr, digest)
    return mr


@dataclass(frozen=True, slots=True)
class EventLogEntry:
    """One event-log record as dstack serialises it: imr, event_type, digest, event, event_payload."""

    imr: int
    event_type: int
    digest: bytes
    event: str
    event_payload: bytes

    @classmethod
    def runtime(cls, name: str, payload: bytes) -> EventLogEntry:
        return cls(3, RUNTIME_EVENT_TYPE, runtime_event_digest(name, payload), name, payload)

    def to_json(self) -> dict[str, Any]:
        return {
            "imr": self.imr,
            "event_type": self.event_type,
            "digest": self.digest.hex(),
            "event": self.event,
            "event_payload": self.event_payload.hex(),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> EventLogEntry:
        return cls(
            imr=int(obj["imr"]),
            event_type=int(obj["event_type"]),
            digest=parse_hex(str(obj["digest"]), "digest"),
            event=str(obj["event"]),
            event_payload=parse_hex(str(obj["event_payload"]), "event_payload"),
        )

    def recomputed_digest(self) -> bytes:
        """The digest a verifier should trust: recomputed for runtime events, as given otherwise."""
        if self.event_type == RUNTIME_EVENT_TYPE:
            return runtime_event_digest(self.event, self.event_payload)
        return self.digest


def replay_event_log(events: Iterable[EventLogEntry]) -> tuple[bytes, bytes, bytes, bytes]:
    """Replay RTMR0-3 from an event log, recomputing runtime-event digests (never trusting the field)."""
    digests: list[list[bytes]] = [[], [], [], []]
    for event in events:
        if not 0 <= event.imr <= 3:
            raise ValueError(f"event {event.event!r} names IMR {event.imr}, expected 0-3")
        digests[event.imr].append(event.recomputed_digest())
    r0, r1, r2, r3 = (replay_rtmr(d) for d in digests)
    return r0, r1, r2, r3


def boot_event_log(
    *,
    measurement_seed: str,
    app_id: bytes,
    compose_hash: bytes,
    instance_id: bytes,
    os_image_hash: bytes,
    key_provider: bytes,
) -> list[EventLogEntry]:
    """Return the devnet boot log: synthetic IMR 0-2 measurements, then dstack's IMR 3 boot events."""
    log = []
    for imr in range(3):
        payload = f"attestmesh-devnet:{measurement_seed}:imr{imr}".encode()
        log.append(
            EventLogEntry(
                imr,
                SYNTHETIC_EVENT_TYPE,
                hashlib.sha384(payload).digest(),
                f"attestmesh-devnet-imr{imr}",
                payload,
            )
        )
    log += [
        EventLogEntry.runtime("system-preparing", b""),
        EventLogEntry.runtime("app-id", app_id),
        EventLogEntry.runtime("compose-hash", compose_hash),
        EventLogEntry.runtime("instance-id", instance_id),
        EventLogEntry.runtime("boot-mr-done", b""),
        EventLogEntry.runtime("os-image-hash", os_image_hash),
        EventLogEntry.runtime("key-provider", key_provider),
        EventLogEntry.runtime("storage-fs", b"ext4"),
        EventLogEntry.runtime("system-ready", b""),
    ]
    return log


def fake_mrtd(measurement_seed: str) -> bytes:
    """Return a deterministic 48-byte MRTD for the devnet (the TD's initial contents stand-in)."""
    return hashlib.sha384(f"attestmesh-devnet:{measurement_seed}:mrtd".encode()).digest()


def boot_time_rtmr3(events: Sequence[EventLogEntry]) -> bytes:
    """Replay RTMR3 up to and including ``boot-mr-done`` (dstack's "boot-time" mode, dstack.md §7.4)."""
    digests = []
    for event in events:
        if event.imr != 3:
            continue
        digests.append(event.recomputed_digest())
        if event.event_type == RUNTIME_EVENT_TYPE and event.event == "boot-mr-done":
            break
    return replay_rtmr(digests)


def mr_aggregated(mrtd: bytes, rtmr0: bytes, rtmr1: bytes, rtmr2: bytes, rtmr3: bytes) -> bytes:
    """Return sha256(mrtd ‖ rtmr0 ‖ rtmr1 ‖ rtmr2 ‖ rtmr3) (config id and owner fields are zero here)."""
    return hashlib.sha256(mrtd + rtmr0 + rtmr1 + rtmr2 + rtmr3).digest()


@dataclass(frozen=True, slots=True)
class DevQuote:
    """The contents of a development quote. Byte fields travel as lowercase hex in the JSON."""

    report_data: bytes  # 64
    mrtd: bytes  # 48
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    app_id: bytes  # 20
    compose_hash: bytes  # 32
    instance_id: bytes  # 20
    device_id: bytes  # 32
    os_image_hash: bytes  # 32
    tcb_status: str

    def __post_init__(self) -> None:
        for name, size in _DEV_QUOTE_SIZES.items():
            value = getattr(self, name)
            if len(value) != size:
                raise DevQuoteError(f"{name} must be {size} bytes, got {len(value)}")

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3


_DEV_QUOTE_SIZES = {
    "report_data": REPORT_DATA_BYTES,
    "mrtd": MR_BYTES,
    "rtmr0": MR_BYTES,
    "rtmr1": MR_BYTES,
    "rtmr2": MR_BYTES,
    "rtmr3": MR_BYTES,
    "app_id": 20,
    "compose_hash": 32,
    "instance_id": 20,
    "device_id": 32,
    "os_image_hash": 32,
}
_DEV_QUOTE_FIELDS = frozenset(f.name for f in fields(DevQuote))


def encode_dev_quote(quote: DevQuote) -> bytes:
    """Serialise a development quote: magic ‖ canonical JSON (sorted keys, compact, ASCII)."""
    body: dict[str, Any] = {
        name: (value.hex() if isinstance(value, bytes) else value)
        for name in sorted(_DEV_QUOTE_FIELDS)
        for value in [getattr(quote, name)]
    }
    body["format"] = DEV_QUOTE_FORMAT
    body["development_only"] = True
    return DEV_QUOTE_MAGIC + json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii")


def parse_dev_quote(data: bytes) -> DevQuote:
    """Parse a development quote produced by ``encode_dev_quote``; raise ``DevQuoteError`` otherwise."""
    if not data.startswith(DEV_QUOTE_MAGIC):
        raise DevQuoteError("not a devnet development quote (bad magic)")
    try:
        body = json.loads(data[len(DEV_QUOTE_MAGIC) :].decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DevQuoteError("development quote body is not ASCII JSON") from None
    if not isinstance(body, dict):
        raise DevQuoteError("development quote body is not a JSON object")
    if body.get("format") != DEV_QUOTE_FORMAT or body.get("development_only") is not True:
        raise DevQuoteError(f"development quote format is not {DEV_QUOTE_FORMAT}")
    expected = _DEV_QUOTE_FIELDS | {"format", "development_only"}
    if set(body) != expected:
        raise DevQuoteError(f"development quote fields differ: {sorted(set(body) ^ expected)}")
    values: dict[str, Any] = {}
    for name in _DEV_QUOTE_FIELDS:
        value = body[name]
        if not isinstance(value, str):
            raise DevQuoteError(f"development quote field {name} is not a string")
        if name == "tcb_status":
            values[name] = value
            continue
        if not re.fullmatch(r"(?:[0-9a-f]{2})*", value):
            raise DevQuoteError(f"development quote field {name} is not lowercase hex")
        values[name] = bytes.fromhex(value)
    return DevQuote(**values)
