"""Structured logs: the one logging configuration of the sidecar and the indexer.

Owns ``configure_logging`` (structlog JSON lines on stdout; the standard library's loggers — aiohttp,
web3 — rendered the same way at WARNING and above) and the defensive ``drop_secret_keys`` processor.

Must not: log private material (the processor is the last line of defence, not the policy: callers log
public values only), or configure metrics (``sidecar.observability``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

SECRET_KEY_FRAGMENTS: Final = ("private", "secret", "key_material")
"""An event key containing one of these (case-insensitive) is dropped from the log line, at any depth."""

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _is_secret_key(name: object) -> bool:
    lowered = str(name).lower()
    return any(fragment in lowered for fragment in SECRET_KEY_FRAGMENTS)


def _scrub(value: object) -> object:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not _is_secret_key(k)}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def drop_secret_keys(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Remove every key named like private/secret/key_material (also inside nested dicts and lists)."""
    dropped = sorted(str(k) for k in event_dict if _is_secret_key(k))
    for name in dropped:
        del event_dict[name]
    for key, value in list(event_dict.items()):
        if isinstance(value, dict | list | tuple):
            event_dict[key] = _scrub(value)
    if dropped:
        event_dict["redacted_keys"] = dropped
    return event_dict


def _json_default(value: object) -> object:
    # Raw bytes in a log line are far more likely key material than anything else: public values
    # (ids, hashes, public keys) have typed wrappers whose str() is hex.
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes redacted>"
    return str(value)


def _renderer() -> structlog.processors.JSONRenderer:
    return structlog.processors.JSONRenderer(default=_json_default, sort_keys=False)


def configure_logging(level: str, *, stream: TextIO | None = None) -> None:
    """Send structlog events and stdlib WARNING+ records as JSON lines to ``stream`` (default stdout)."""
    try:
        threshold = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(_LEVELS)}") from None
    out = stream if stream is not None else sys.stdout
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp")
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamper,
    ]
    tail: list[structlog.typing.Processor] = [
        drop_secret_keys,
        structlog.processors.format_exc_info,
        _renderer(),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(threshold, logging.WARNING))
    logging.captureWarnings(True)


# ----------------------------------------------------------------------------------------------- metrics
