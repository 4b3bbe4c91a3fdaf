"""Commands run inside a lab node as an operator on that node would run them.

Owns ``node_exec_argv`` and ``run_in_node``: a command in the node's network namespace and in a private
mount namespace (the one ``ip netns exec`` gives it) where the node's WireGuard UAPI directory is
bind-mounted over /run/wireguard, exactly as ``devnet.wireguard`` starts the node's wireguard-go, so
``wg show`` sees the node's device (a bare ``ip netns exec NS wg show`` sees none: the socket is private
to the node).
Must not: change anything of the node itself (the bind mount vanishes with the command's mount namespace),
or swallow the command's exit status.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from devnet.state import NodeState
from devnet.wireguard import WG_RUN_DIR

# "$1" is the node's UAPI directory; the rest is the command.
_EXEC: Final = f'mount --bind "$1" {WG_RUN_DIR} && shift && exec "$@"'


class NodeExecError(RuntimeError):
    """The command cannot be run in the node (its WireGuard directory is missing)."""


def with_wg_dir_argv(wg_dir: str, command: Sequence[str]) -> list[str]:
    """The argv that bind-mounts ``wg_dir`` over /run/wireguard, then execs ``command`` (run it in a
    private mount namespace: ``ip netns exec`` gives one)."""
    return ["sh", "-c", _EXEC, "sh", wg_dir, *command]


def node_exec_argv(node: NodeState, command: Sequence[str]) -> list[str]:
    """The argv that runs ``command`` in ``node``'s network namespace with its WireGuard socket directory."""
    return ["ip", "netns", "exec", node.netns, *with_wg_dir_argv(node.wg_uapi_dir, command)]


def run_in_node(node: NodeState, command: Sequence[str]) -> int:
    """Run ``command`` in ``node`` (stdin, stdout and stderr are this process's); return its exit status."""
    if not Path(node.wg_uapi_dir).is_dir():
        raise NodeExecError(f"node {node.name} has no WireGuard directory {node.wg_uapi_dir} (never booted?)")
    WG_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)  # the bind mount's target, in the root fs
    return subprocess.run(node_exec_argv(node, command), check=False).returncode
