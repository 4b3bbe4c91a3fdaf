"""``attestmesh devnet up|status|env|compose|down``: the lab as a whole.

Owns running these verbs and rendering their results (human, JSON, and ``KEY=value`` lines for a shell's
``eval``), and ``status --wait-healthy``'s progress: each node's phase change, on stderr. Must not: hold
logic of its own (``devnet.lab`` does the work).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from devnet.compose import (
    DEFAULT_SIDECAR_IMAGE,
    NodeAnchors,
    compose_hash,
    encode_app_compose,
    node_app_compose,
)
from devnet.lab import Devnet, LabStatus
from devnet.state import DevnetState, NodeState
from ops.errors import OperatorError
from ops.render import print_table, section, shell_lines, short, transport_cell

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
SIDECAR_PREFIXES = ("ATTESTMESH_", "DSTACK_")


def _status_json(status: LabStatus) -> dict[str, Any]:
    data = status.state.to_json()
    data["running"] = {
        "anvil": status.anvil,
        "chain_reachable": status.chain_reachable,
        "head_block": status.head_block,
        "member_count": status.member_count,
        "monitoring": status.monitoring,
    }
    if status.gateway is not None and data.get("gateway") is not None:
        g = status.gateway
        data["gateway"]["running"] = {
            "gateway": g.gateway,
            "dns": g.dns,
            "routes": g.routes,
            "routes_with_ports": g.routes_with_ports,
        }
    health = {h.name: h for h in status.nodes}
    for node in data["nodes"]:
        h = health[node["name"]]
        node["running"] = {
            "node": h.running,  # its last boot was allowed and every process of it is alive
            "simulator": h.simulator,
            "wireguard": h.wireguard,
            "sidecar": h.sidecar,
            "dstack_socket": h.dstack_socket,
            "wg_socket": h.wg_socket,
        }
        node["healthz"] = h.healthz
    if status.indexer is not None and data.get("indexer") is not None:
        i = status.indexer
        data["indexer"]["running"] = {
            "simulator": i.simulator,
            "indexer": i.indexer,
            "registered_key": i.registered_key,
        }
        data["indexer"]["healthz"] = i.healthz
        data["indexer"]["status"] = i.status
    return data


def _print_status(status: LabStatus) -> None:
    s = status.state
    chain = f"head block {status.head_block}" if status.chain_reachable else "UNREACHABLE"
    anvil = "up" if status.anvil else "down"
    print(f"lab {s.lab}  rpc {s.rpc_url}  chain {s.chain_id}  ({chain}; anvil {anvil})")
    print(f"cluster {s.cluster}  members {status.member_count}  mesh {s.mesh_cidr}  transport {s.transport}")
    if s.gateway is not None:
        g = status.gateway
        state = (
            "-" if g is None else f"gateway {'up' if g.gateway else 'DOWN'}, dns {'up' if g.dns else 'DOWN'}"
        )
        routes = "" if g is None else f", {g.routes_with_ports}/{g.routes} routes with ports"
        where = f"{s.gateway.address}:443  *.{s.gateway.domain}"
        print(f"gateway {where}  ({state}{routes})  ca {s.gateway.ca_file}")
    if s.monitoring_url:
        print(f"prometheus {s.monitoring_url}  ({'up' if status.monitoring else 'DOWN'})")
    print(f"indexer registry {s.indexer_registry}  cluster factory {s.cluster_factory}")
    print(f"member app factory {s.member_app_factory}  kms root {s.kms_root}")
    if s.indexer is None:
        print("indexer: none (the lab was made with --no-indexer; sidecars poll chain logs)")
    elif status.indexer is not None:
        i, ihz = status.indexer, status.indexer.healthz or {}
        registered = i.registered_key == s.indexer.public_key and bool(i.registered_key)
        state = ("healthy" if ihz.get("healthy") else "unhealthy") if i.indexer else "stopped"
        print(
            f"indexer {s.indexer.url}  {state}  key v{s.indexer.key_version} {short(s.indexer.public_key)}"
            f"  {'registered' if registered else 'NOT the registered key'}"
            f"  subscribers {(i.status or {}).get('subscribers', '-')}  lag {ihz.get('lag_blocks', '-')}"
        )
    if not s.complete:
        print("state: INCOMPLETE (an `up` did not finish; run `attestmesh devnet down` or `up` again)")
    header = ("node", "netns", "underlay", "app id", "compose", "boot", "agent", "wg")
    rows = [header]
    health = {h.name: h for h in status.nodes}
    for n in s.nodes:
        h = health[n.name]
        rows.append(
            (
                n.name,
                n.netns,
                n.underlay_ip,
                short(n.app_id),
                short(n.compose_hash),
                n.boot or "pending",
                "up" if h.simulator and h.dstack_socket else "-",
                "up" if h.wireguard and h.wg_socket else "-",
            )
        )
    print_table(rows)
    if s.sidecars:
        print()
        _print_node_health(s, status)


def _print_node_health(s: DevnetState, status: LabStatus) -> None:
    health = {h.name: h for h in status.nodes}
    health_rows = [
        (
            "node",
            "phase",
            "mesh ip",
            "live peers",
            "transport",
            "csk commitment",
            "membership digest",
            "reason",
        )
    ]
    for n in s.nodes:
        hz = health[n.name].healthz
        if hz is None:
            health_rows.append((n.name, "-", "-", "-", s.transport, "-", "-", "no answer"))
            continue
        peers, csk = hz.get("peers") or {}, hz.get("csk") or {}
        health_rows.append(
            (
                n.name,
                str(hz.get("phase")),
                str((hz.get("node") or {}).get("mesh_ip") or "-"),
                f"{peers.get('live', 0)}/{peers.get('desired', 0)}",
                transport_cell(peers.get("transport"), s.transport),
                short(str(csk.get("commitment") or "-")),
                short(str(hz.get("membership_digest") or "-")),
                str(hz.get("reason") or ""),
            )
        )
    print_table(health_rows)


def run_up(lab: Devnet, args: argparse.Namespace) -> int:
    result = lab.up(
        args.nodes,
        args.block_time,
        sidecars=not args.no_sidecar,
        indexer=not args.no_indexer,
        transport=args.transport,
        monitoring=args.monitoring,
        workload=args.workload,
        image=args.image,
    )
    verb = "created" if result.created else "already running; nothing changed"
    nodes, transport = len(result.state.nodes), result.state.transport
    workload = "image " + result.state.image if result.state.workload == "image" else "process"
    print(
        f"lab {lab.plan.name}: {verb} ({nodes} nodes, transport {transport}, workload {workload}, "
        f"state {lab.state_file})"
    )
    if result.state.monitoring_url:
        print(
            f"prometheus {result.state.monitoring_url} (alerts: {result.state.monitoring_url}/api/v1/alerts)"
        )
    elif args.monitoring and not result.created:
        print("--monitoring: the running lab has no Prometheus; `devnet down`, then `up --monitoring`")
    return EXIT_OK


def _progress(line: str) -> None:
    """A line of progress while a verb waits: on stderr, so stdout stays the result (``--json`` too)."""
    print(line, file=sys.stderr, flush=True)


def run_status(lab: Devnet, args: argparse.Namespace) -> int:
    if args.wait_healthy is None:
        status = lab.status()
    else:
        _progress(f"lab {lab.plan.name}: waiting up to {args.wait_healthy:g} s for every node to be healthy")
        status = lab.wait_healthy(args.wait_healthy, _progress)
        _progress(f"lab {lab.plan.name}: every running node is healthy")
    if status is None:
        if args.json:
            print(json.dumps({"lab": lab.plan.name, "running": None}))
        else:
            print(f"lab {lab.plan.name}: not running (no {lab.state_file})")
    elif args.json:
        print(json.dumps(_status_json(status), indent=2, sort_keys=True))
    else:
        _print_status(status)
    return EXIT_OK


def run_down(lab: Devnet, _: argparse.Namespace) -> int:
    left = lab.down()
    if left:
        print(f"lab {lab.plan.name}: could not remove: {', '.join(left)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"lab {lab.plan.name}: removed")
    return EXIT_OK


def sidecar_env_lines(lab: Devnet, state: DevnetState, node: NodeState) -> str:
    """Node ``node``'s sidecar environment as ``KEY=value`` lines: exactly the ``ATTESTMESH_*`` and
    ``DSTACK_*`` variables the lab starts its sidecar with (the rest is this process's own environment)."""
    env = lab.sidecar_env(state, node)
    return shell_lines(sorted((key, value) for key, value in env.items() if key.startswith(SIDECAR_PREFIXES)))


def run_env(lab: Devnet, args: argparse.Namespace) -> int:
    state = lab.running_state()
    if args.sidecar:
        if args.name is None:
            print("attestmesh: devnet env --sidecar needs a NODE", file=sys.stderr)
            return EXIT_USAGE
        if args.json:
            env = lab.sidecar_env(state, state.node(args.name))
            sidecar = {k: v for k, v in sorted(env.items()) if k.startswith(SIDECAR_PREFIXES)}
            print(json.dumps(sidecar, indent=2, sort_keys=True))
        else:
            print(sidecar_env_lines(lab, state, state.node(args.name)))
        return EXIT_OK
    idx, gw = state.indexer, state.gateway_mode
    pairs: list[tuple[str, object]] = [
        ("ATTESTMESH_RPC_URL", state.rpc_url),
        ("ATTESTMESH_CHAIN_ID", state.chain_id),
        ("ATTESTMESH_CLUSTER", state.cluster),
        ("ATTESTMESH_INDEXER_REGISTRY", state.indexer_registry),
        ("ATTESTMESH_MEMBER_APP_FACTORY", state.member_app_factory),
        ("ATTESTMESH_KMS_ROOTS", state.kms_root),
        # The lab's node app-compose.json: its trust anchors as literals (what `node add` boots by default).
        ("LAB_COMPOSE_FILE", lab.compose_file(state)),
        # The lab's indexer (empty when it runs none), for deploy/indexer.sh: in gateway mode the URLs
        # through the gateway (the underlay ones are firewalled, as a CVM's are).
        ("INDEXER_URL", idx and idx.url),
        ("INDEXER_STATUS_URL", idx and (idx.gateway_status_url if gw else idx.status_url)),
        ("INDEXER_HEALTH_URL", idx and (idx.gateway_health_url if gw else idx.health_url)),
        ("INDEXER_KEY_VERSION", idx and idx.key_version),
        # How the lab is reached: its transport and, in gateway mode, the gateway (its domain, its address
        # for a client with no resolver for the domain, and the CA that verifies its certificate).
        ("LAB_TRANSPORT", state.transport),
        ("GATEWAY_DOMAIN", state.gateway and state.gateway.domain),
        ("GATEWAY_ADDRESS", state.gateway and state.gateway.address),
        ("GATEWAY_CA_FILE", state.gateway and state.gateway.ca_file),
        # Every node's compose hash (NAME=0xHASH, space-separated): who still runs a compose (a roll's last
        # step retires the old hash only once no node has it).
        ("LAB_NODE_COMPOSE_HASHES", " ".join(f"{n.name}={n.compose_hash}" for n in state.nodes)),
    ]
    if args.name is not None:
        node = next((n for n in state.nodes if n.name == args.name), None)
        health = lab.node_health(node, state) if node is not None else None
        body = (health.healthz if health is not None else None) or {}
        me = section(body, "node")
        pairs += [
            ("NODE_NAME", args.name),
            ("NODE_EXISTS", node is not None),
            ("NODE_APP_ID", node and node.app_id),
            ("NODE_COMPOSE_HASH", node and node.compose_hash),
            ("NODE_BOOT", node and node.boot),
            ("NODE_RUNNING", health is not None and health.running),
            ("NODE_SIGNER", node and node.signer),
            # An operator's URL: through the gateway in gateway mode.
            ("NODE_HEALTH_URL", node and (node.gateway_health_url if gw else node.health_url)),
            ("NODE_HEALTHY", body.get("healthy") is True),
            ("NODE_PHASE", body.get("phase")),
            ("NODE_MEMBER_ID", me.get("member_id")),
            ("NODE_MESH_IP", me.get("mesh_ip")),
        ]
    if args.json:  # the same names; true/false for 1/0, null for empty
        print(json.dumps(dict(pairs), indent=2, sort_keys=True, default=str))
    else:
        print(shell_lines(pairs))
    return EXIT_OK


def run_compose(lab: Devnet, args: argparse.Namespace) -> int:
    """The lab's node app-compose.json with another sidecar image (and more sealed names): the exact bytes
    to stdout, or to ``--output`` with one line naming its compose hash."""
    state = lab.running_state()
    image = args.image or DEFAULT_SIDECAR_IMAGE
    try:
        document = node_app_compose(NodeAnchors.of_lab(state), extra_envs=tuple(args.extra_env), image=image)
    except OperatorError as exc:
        print(f"attestmesh: {exc}", file=sys.stderr)
        return EXIT_USAGE
    data = encode_app_compose(document)
    if args.output is None:
        sys.stdout.buffer.write(data)
        return EXIT_OK
    args.output.write_bytes(data)
    print(f"wrote {args.output}: compose hash {compose_hash(data)} (image {image})")
    return EXIT_OK
