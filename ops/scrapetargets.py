"""Prometheus ``file_sd`` target groups for a cluster's members and its indexer, through a gateway.

Owns ``gateway_target`` (``<app id hex>-<port>.<gateway domain>:443``, as dstack's gateway names a CVM's
port), ``target_groups`` (one group per target, labelled with the ``cluster`` and an ``instance`` that is
the app id, so alerts name the member as ``attestmesh cluster status`` does) and ``write_file_sd`` (atomic:
Prometheus re-reads a target file when it changes and must never see half of one). The job names and the
file names are those of ``deploy/monitoring/prometheus.yml``.
``member_groups`` and ``indexer_groups`` make the groups from what ``attestmesh chain scrape-targets`` read.
Must not: read the chain (callers pass the members in) or put anything private in a label.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from sidecar.core.model import IndexerRecord, MemberRecord

NODE_HEALTH_PORT: Final = 9090
INDEXER_PORT: Final = 8080
NODE_TARGETS: Final = "nodes.json"
INDEXER_TARGETS: Final = "indexer.json"

TargetGroup = dict[str, object]


def bare_app_id(app_id: str) -> str:
    """An app id as the gateway names it: 40 lower-case hex characters without ``0x``."""
    bare = app_id.lower().removeprefix("0x")
    if len(bare) != 40 or any(c not in "0123456789abcdef" for c in bare):
        raise ValueError(f"an app id is 20 bytes of hex, got {app_id!r}")
    return bare


def gateway_target(app_id: str, port: int, domain: str) -> str:
    """The scrape address of a CVM's ``port`` through the gateway of ``domain``."""
    return f"{bare_app_id(app_id)}-{port}.{domain.strip('.').lower()}:443"


def target_groups(cluster: str, targets: Mapping[str, str]) -> list[TargetGroup]:
    """One ``file_sd`` group per ``instance -> address``, labelled with ``cluster`` and the instance."""
    return [
        {"targets": [address], "labels": {"cluster": cluster, "instance": instance}}
        for instance, address in sorted(targets.items())
    ]


def member_groups(cluster: str, members: Sequence[MemberRecord], domain: str) -> list[TargetGroup]:
    """The target groups of every member's sidecar (``/metrics`` on its health port) through the gateway."""
    targets = {
        bare_app_id(str(m.app_id)): gateway_target(str(m.app_id), NODE_HEALTH_PORT, domain) for m in members
    }
    return target_groups(cluster, targets)


def indexer_groups(cluster: str, record: IndexerRecord | None) -> list[TargetGroup]:
    """The registered indexer's target group: the host of its registered endpoint (``wss://<app id>-8080.
    <domain>/…``) on 443, its ``instance`` the app id; none when no indexer is registered."""
    if record is None or not record.registered:
        return []
    host = urllib.parse.urlsplit(record.endpoint).hostname or ""
    if not host:
        raise ValueError("the registered indexer endpoint has no host")
    instance = host.split("-", 1)[0] if "-" in host else host
    return target_groups(cluster, {instance: f"{host}:443"})


def write_file_sd(path: Path, groups: list[TargetGroup]) -> None:
    """Write a target file atomically (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(groups, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
