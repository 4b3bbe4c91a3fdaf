"""The ``attestmesh devnet …`` verbs' arguments and help.

Owns the argparse definitions of the lab options and of ``up``, ``status``, ``env``, ``compose``, ``down``,
``node …``, ``indexer …`` and ``gateway …``. Must not: import the lab (``devnet.lab``: web3 and the rest load
only when a verb runs), or run anything.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from devnet.container import DEFAULT_IMAGE, WORKLOADS
from devnet.topology import DEFAULT_LAB, DEFAULT_MESH, DEFAULT_TRANSPORT, DEFAULT_UNDERLAY, TRANSPORTS
from ops.args import Subcommands, file_arg, wait_arg


def add_parser(top: Subcommands[argparse.ArgumentParser]) -> None:
    """Add the ``devnet`` command and its verbs to ``top``."""
    dev = top.add_parser("devnet", help="a local cluster on this machine (anvil, simulators, namespaces)")
    dev.add_argument(
        "--lab-dir",
        type=Path,
        default=Path(os.environ.get("ATTESTMESH_DEVNET_DIR", ".devnet")),
        help="lab directory holding state.json and logs (env ATTESTMESH_DEVNET_DIR; default ./.devnet)",
    )
    dev.add_argument(
        "--lab",
        default=os.environ.get("ATTESTMESH_LAB", DEFAULT_LAB),
        help="lab name: prefix of every namespace and link it makes (env ATTESTMESH_LAB)",
    )
    dev.add_argument(
        "--underlay",
        default=os.environ.get("ATTESTMESH_LAB_UNDERLAY", str(DEFAULT_UNDERLAY)),
        help="the lab's underlay /24 (env ATTESTMESH_LAB_UNDERLAY)",
    )
    dev.add_argument(
        "--mesh-cidr",
        default=os.environ.get("ATTESTMESH_LAB_MESH", str(DEFAULT_MESH)),
        help="the cluster's mesh CIDR (env ATTESTMESH_LAB_MESH)",
    )
    verbs = dev.add_subparsers(dest="verb", required=True)
    up = verbs.add_parser("up", help="build the lab (a running lab is left as it is)")
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    up.add_argument(
        "--block-time",
        type=float,
        default=None,
        help="seconds per empty block; transactions are mined at once regardless (default: 1)",
    )
    up.add_argument("--no-sidecar", action="store_true", help="boot the nodes without their workload")
    up.add_argument("--no-indexer", action="store_true", help="run no indexer (sidecars poll chain logs)")
    up.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="process",
        help="process: each sidecar a Python process in its node's namespace (the default, fastest); image: "
        "a podman container of the image, as dstack's compose runs it (build it first: make image)",
    )
    up.add_argument(
        "--image",
        default=os.environ.get("ATTESTMESH_IMAGE", DEFAULT_IMAGE),
        help=f"the image of --workload image (env ATTESTMESH_IMAGE; default {DEFAULT_IMAGE}: make image's)",
    )
    up.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default=os.environ.get("ATTESTMESH_LAB_TRANSPORT", DEFAULT_TRANSPORT),
        help="gateway: a CVM's network (every node and the indexer accept inbound traffic only from the "
        "lab's gateway stand-in, names resolve through the lab DNS; the default); direct: plain WireGuard "
        "UDP between the nodes' underlay addresses (env ATTESTMESH_LAB_TRANSPORT)",
    )
    up.add_argument(
        "--monitoring",
        action="store_true",
        help="also run Prometheus (the Debian package's) with deploy/monitoring's rules, scraping every "
        "node and the indexer (through the gateway in gateway mode); its API on a lab address, see "
        "`devnet status`",
    )
    status = verbs.add_parser("status", help="what the lab is made of and what is running")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--wait-healthy",
        type=wait_arg,
        default=None,
        metavar="SECONDS",
        help="first wait until every node is healthy, each node's phase change printed on stderr as it is "
        "seen (exit 1 at the deadline)",
    )
    env = verbs.add_parser(
        "env",
        help="the lab's chain variables (and one node's facts) as KEY=value lines for a shell's eval",
        description="Print shell-quoted KEY=value lines: ATTESTMESH_RPC_URL, ATTESTMESH_CHAIN_ID, "
        "ATTESTMESH_CLUSTER, ATTESTMESH_INDEXER_REGISTRY and ATTESTMESH_MEMBER_APP_FACTORY (the defaults of "
        "the chain commands), the lab indexer's INDEXER_URL, INDEXER_STATUS_URL, INDEXER_HEALTH_URL and "
        "INDEXER_KEY_VERSION, every node's compose hash (LAB_NODE_COMPOSE_HASHES: NAME=0xHASH …), and "
        "with NODE its facts: NODE_NAME, NODE_EXISTS, NODE_APP_ID, "
        "NODE_COMPOSE_HASH, NODE_BOOT, NODE_RUNNING, NODE_SIGNER, "
        "NODE_HEALTH_URL, NODE_HEALTHY, NODE_PHASE, NODE_MEMBER_ID, NODE_MESH_IP (1/0 for yes/no, empty when "
        'unknown). Use: set -a; eval "$(attestmesh devnet env node-1)"; set +a',
    )
    env.add_argument("name", nargs="?", default=None, help="a node (it need not exist: NODE_EXISTS=0)")
    env.add_argument(
        "--sidecar",
        action="store_true",
        help="instead: exactly the ATTESTMESH_* and DSTACK_* variables NODE's sidecar runs with (the lab's "
        "sidecar_env), as KEY=value lines a sidecar accepts",
    )
    env.add_argument(
        "--json",
        action="store_true",
        help="the same values as one JSON object (true/false, null when unknown)",
    )
    compose = verbs.add_parser(
        "compose",
        help="the lab's node app-compose.json with another sidecar image (print it, or --output)",
        description="Write the lab's node app-compose.json (its cluster's trust anchors as literals) with "
        "the sidecar image IMAGE: pinned by digest (…@sha256:<64 hex>) it gets pull_policy missing, a tag "
        "pull_policy always, as `attestmesh compose node --image` writes them; either way another compose "
        "hash, to allowlist before a node boots with it (deploy/node.sh NODE update, SIDECAR_IMAGE=).",
    )
    compose.add_argument(
        "--image", default=None, help="default: the repository's ghcr.io/attestmesh/attestmesh-sidecar:latest"
    )
    compose.add_argument(
        "--extra-env", action="append", default=[], metavar="NAME", help="one more sealed name (repeatable)"
    )
    compose.add_argument("--output", "-o", type=Path, default=None, help="write here instead of stdout")
    verbs.add_parser("down", help="remove every namespace, process, mount, route and socket of the lab")
    _add_node_parser(verbs)
    _add_indexer_parser(verbs)
    _add_gateway_parser(verbs)


def _add_gateway_parser(verbs: Subcommands[argparse.ArgumentParser]) -> None:
    gw = verbs.add_parser("gateway", help="the lab's gateway stand-in (gateway mode)")
    gw_verbs = gw.add_subparsers(dest="gateway_verb", required=True)
    start = gw_verbs.add_parser(
        "start",
        help="(re)start the gateway stand-in, optionally with other limits (they stay for later starts)",
        description="Restart the gateway stand-in with the limits it ran with, or dstack's defaults with "
        "--defaults, and the --set values on top. Limits: connect_timeout, handshake_timeout, idle_timeout, "
        "lifetime (seconds), idle_checks_per_window, max_connections_per_app (0: unlimited), "
        "route_poll_interval. Example: gateway start --set lifetime=20 (every connection closed after 20 s).",
    )
    start.add_argument(
        "--set",
        dest="limits",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a limit for this start and later ones (repeatable)",
    )
    start.add_argument("--defaults", action="store_true", help="start from dstack's defaults")
    gw_verbs.add_parser("stop", help="stop the gateway stand-in (every route through it is down)")
    limits = gw_verbs.add_parser("limits", help="the limits the gateway stand-in runs with (always JSON)")
    limits.add_argument("--json", action="store_true", help="accepted for uniformity: the output is JSON")


def _add_indexer_parser(verbs: Subcommands[argparse.ArgumentParser]) -> None:
    idx = verbs.add_parser("indexer", help="the lab's shared indexer")
    idx_verbs = idx.add_subparsers(dest="indexer_verb", required=True)
    start = idx_verbs.add_parser(
        "start", help="start the indexer (restart it if its key or values changed) and register it"
    )
    start.add_argument(
        "--no-register", action="store_true", help="only start it (deploy/indexer.sh registers it itself)"
    )
    update = idx_verbs.add_parser(
        "update",
        help="apply a sealed env file's values (ATTESTMESH_INDEXER_KEY_VERSION and the tunables) and restart "
        "the indexer with them, WITHOUT registering it; a no-op when it already runs with them",
        description="Apply the values of a sealed env file (KEY=value lines, as `phala deploy -e` reads "
        "them) to the lab's indexer and restart it, without registering it (deploy/indexer.sh's register "
        "step does that). The file is the whole sealed env: a value it leaves out is back to its default "
        "(KEY_VERSION 1). Variables the lab sets (RPC_URL, CHAIN_ID, CLUSTER_FACTORY, CLUSTERS, START_BLOCK, "
        "REGISTRY, PUBLIC_URL, CODE_ID, LISTEN_ADDR) may appear only with the lab's value. The values are "
        "kept, so `indexer start` runs with them too. Exit 2 when the file cannot be applied.",
    )
    update.add_argument("--env-file", type=file_arg, required=True, help="the sealed env file")
    idx_verbs.add_parser("stop", help="stop the indexer (the registry still names it: an outage)")
    rotate = idx_verbs.add_parser("rotate-key", help="register the next signing key, then restart with it")
    rotate.add_argument(
        "--no-restart",
        action="store_true",
        help="only register the new key (the old-key indexer keeps running)",
    )


def _add_node_parser(verbs: Subcommands[argparse.ArgumentParser]) -> None:
    node = verbs.add_parser("node", help="node verbs")
    node_verbs = node.add_subparsers(dest="node_verb", required=True)
    add = node_verbs.add_parser(
        "add", help="add a node: app contract, approved app id, compose, boot gate; exit 1 when denied"
    )
    add.add_argument("name")
    add.add_argument("--compose-file", type=Path, default=None, help="app-compose.json to measure and boot")
    start = node_verbs.add_parser(
        "start", help="re-run the KMS boot gate and start the node if allowed; exit 1 when denied"
    )
    start.add_argument("name")
    node_verbs.add_parser("stop", help="stop the node (workload, wireguard-go, guest agent)").add_argument(
        "name"
    )
    node_verbs.add_parser(
        "restart", help="restart the node's workload (the sidecar); the guest agent and interface stay up"
    ).add_argument("name")
    node_verbs.add_parser(
        "reboot",
        help="restart the node's CVM: stop everything of it, then the KMS boot gate and start (state kept); "
        "exit 1 when the gate denies it",
    ).add_argument("name")
    prepare = node_verbs.add_parser(
        "prepare",
        help="the compose hash the node would boot with and whether the cluster allowlists it (reads only)",
    )
    prepare.add_argument("name")
    prepare.add_argument(
        "--compose-file", type=file_arg, required=True, help="the app-compose.json to measure"
    )
    shape = prepare.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="machine-readable output")
    shape.add_argument("--shell", action="store_true", help="KEY=value lines for a shell's eval")
    update = node_verbs.add_parser(
        "update",
        help="write the node's app-compose.json and reboot it through the KMS gate (identity carried over); "
        "a no-op when it already runs that compose; exit 1 when the gate denies it (allowlist first)",
    )
    update.add_argument("name")
    update.add_argument("--compose-file", type=file_arg, required=True, help="the new app-compose.json")
    node_verbs.add_parser("remove", help="evict the node's member on chain (cluster owner)").add_argument(
        "name"
    )
    run = node_verbs.add_parser(
        "exec",
        help="run a command in the node's network namespace with its WireGuard socket directory at "
        "/run/wireguard (so `wg show` sees the node's device); exit status of the command",
        description="Run CMD inside node NAME's network namespace, in a private mount namespace where the "
        "node's WireGuard UAPI directory is bind-mounted over /run/wireguard, as the lab runs wireguard-go "
        "(a bare `ip netns exec NS wg show` sees no device: the socket is private to the node). "
        "Example: attestmesh devnet node exec node-1 -- wg show. The exit status is the command's.",
    )
    run.add_argument("name")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments")
