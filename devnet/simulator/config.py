"""The simulator's per-node configuration: public data only, loaded from a JSON file.

Owns ``SimulatorConfig`` and its JSON form. Example (hex may carry ``0x``)::

    {
      "app_id": "0x5bb4ff9a3837357f19dc176407a5709c62eb6c56",
      "instance_id": "0x00000000000000000000000000000000000000a1",
      "app_compose_path": "app-compose.json",        # relative to the config file
      "app_name": "node-1",                          # optional: default is the compose "name"
      "device_id": "…32 bytes…",      # optional: sha256("attestmesh-devnet-device:" ‖ instance_id)
      "os_image_hash": "…32 bytes…",  # optional: sha256("attestmesh-devnet-os-image")
      "measurement_seed": "dev-image-1",             # optional: default the os_image_hash hex
      "tcb_status": "UpToDate",                      # optional
      "version": "0.5.8", "rev": "attestmesh-devnet",# optional: what Version reports
      "cpu_count": 2, "memory_size": 2147483648      # optional: vm_config
    }

MRTD and RTMR0-2 are derived from ``measurement_seed``; nodes that share an OS image therefore share
them, as on dstack. Unknown keys are an error (typos must not pass silently).

Must not: hold or accept key material. The KMS seed is not part of the config (see ``__main__``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devnet.simulator.quote import parse_hex
from sidecar.core.ids import Address, Bytes32

DEFAULT_VERSION = "0.5.8"
DEFAULT_REV = "attestmesh-devnet"
DEFAULT_OS_IMAGE_HASH = Bytes32(hashlib.sha256(b"attestmesh-devnet-os-image").digest())


class ConfigError(ValueError):
    """The simulator configuration is missing, malformed or inconsistent."""


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """What one simulated guest agent reports about its CVM."""

    app_id: Address
    instance_id: bytes
    app_compose_path: Path
    app_name: str | None = None
    device_id: Bytes32 | None = None
    os_image_hash: Bytes32 = DEFAULT_OS_IMAGE_HASH
    measurement_seed: str | None = None
    tcb_status: str = "UpToDate"
    version: str = DEFAULT_VERSION
    rev: str = DEFAULT_REV
    cpu_count: int = 2
    memory_size: int = 2 * 1024**3

    def __post_init__(self) -> None:
        if len(self.instance_id) != 20:
            raise ConfigError(f"instance_id must be 20 bytes, got {len(self.instance_id)}")

    @property
    def effective_device_id(self) -> Bytes32:
        if self.device_id is not None:
            return self.device_id
        return Bytes32(hashlib.sha256(b"attestmesh-devnet-device:" + self.instance_id).digest())

    @property
    def effective_measurement_seed(self) -> str:
        return self.measurement_seed if self.measurement_seed is not None else self.os_image_hash.hex

    @classmethod
    def from_json(cls, obj: Any, base_dir: Path) -> SimulatorConfig:
        """Build a config from parsed JSON; relative paths are resolved against ``base_dir``."""
        if not isinstance(obj, dict):
            raise ConfigError("config must be a JSON object")
        unknown = set(obj) - _KEYS
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}")
        for key in ("app_id", "instance_id", "app_compose_path"):
            if key not in obj:
                raise ConfigError(f"config key {key!r} is required")
        args: dict[str, Any] = {}
        try:
            args["app_id"] = Address(parse_hex(_str(obj, "app_id"), "app_id"))
            args["instance_id"] = parse_hex(_str(obj, "instance_id"), "instance_id")
            compose = Path(_str(obj, "app_compose_path"))
            args["app_compose_path"] = compose if compose.is_absolute() else base_dir / compose
            for key in ("device_id", "os_image_hash"):
                if key in obj:
                    args[key] = Bytes32(parse_hex(_str(obj, key), key))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for key in ("app_name", "measurement_seed", "tcb_status", "version", "rev"):
            if key in obj:
                args[key] = _str(obj, key)
        for key in ("cpu_count", "memory_size"):
            if key in obj:
                value = obj[key]
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise ConfigError(f"config key {key!r} must be a positive integer")
                args[key] = value
        return cls(**args)

    @classmethod
    def load(cls, path: Path) -> SimulatorConfig:
        """Read a config file (JSON)."""
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config {path} is not JSON: {exc}") from None
        return cls.from_json(obj, path.parent)


_KEYS = frozenset(
    {
        "app_id",
        "instance_id",
        "app_compose_path",
        "app_name",
        "device_id",
        "os_image_hash",
        "measurement_seed",
        "tcb_status",
        "version",
        "rev",
        "cpu_count",
        "memory_size",
    }
)


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be a string")
    return value
