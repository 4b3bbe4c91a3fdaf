"""The operator verbs of ``attestmesh``: their arguments and help.

Owns the argparse definitions of ``indexer register|verify|status``,
``chain status|scrape-targets|allow-compose|disallow-compose|member-app|fund|rotate-csk``, ``cluster
status``, ``compose node|pin`` and ``health``. Must not: import web3, eth_utils or structlog (``ops.args``
parses values lazily), or run anything.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ops.args import (
    Subcommands,
    account_arg,
    address_arg,
    address_list_arg,
    bytes32_arg,
    ca_file_arg,
    chain_id_arg,
    chain_options,
    connect_to_arg,
    domain_arg,
    env_default,
    eth_arg,
    from_env,
    node_name_arg,
    port_arg,
    positive_eth_arg,
    registry_options,
    seconds_arg,
    url_arg,
    wait_arg,
)
from ops.health import HEALTH_TIMEOUT

HEALTH_PORT = 9090  # the sidecar's default ATTESTMESH_HEALTH_PORT (ops.clusterhealth imports aiohttp)

COMPOSE_TEMPLATE = "compose/node.yaml"


def add_operator_parsers(top: Subcommands[argparse.ArgumentParser]) -> None:
    """Add the ``indexer``, ``chain``, ``cluster``, ``compose`` and ``health`` commands to ``top``."""
    _add_indexer_parser(top)
    _add_chain_parser(top)
    _add_cluster_parser(top)
    _add_compose_parser(top)
    _add_health_parser(top)


def _add_compose_parser(top: Subcommands[argparse.ArgumentParser]) -> None:
    compose = top.add_parser("compose", help="render a node's compose file with its cluster's trust anchors")
    verbs = compose.add_subparsers(dest="verb", required=True)
    node = verbs.add_parser(
        "node",
        help="compose/node.yaml with the cluster's measured values as literals (print it, or --output)",
        description="Render the node compose template: the trust anchors (chain id, cluster, member-app "
        "factory, KMS roots, indexer registry) become literal values, so the compose hash covers them and "
        "the sealed env cannot change them; every other ${VAR} stays for the sealed env. Bring-up order: "
        "deploy the cluster, render this with its address, allowlist the hash, deploy the nodes. Each "
        "option defaults to the sidecar variable named in its help.",
    )
    node.add_argument(
        "--chain-id", type=chain_id_arg, help="env ATTESTMESH_CHAIN_ID", **from_env("ATTESTMESH_CHAIN_ID")
    )
    node.add_argument(
        "--cluster", type=address_arg, help="env ATTESTMESH_CLUSTER", **from_env("ATTESTMESH_CLUSTER")
    )
    node.add_argument(
        "--member-app-factory", type=address_arg, help="env ATTESTMESH_MEMBER_APP_FACTORY",
        **from_env("ATTESTMESH_MEMBER_APP_FACTORY"),
    )  # fmt: skip
    node.add_argument(
        "--kms-roots", type=address_list_arg, metavar="0xROOT[,0xROOT…]",
        help="the KMS root(s) the nodes trust (env ATTESTMESH_KMS_ROOTS)", **from_env("ATTESTMESH_KMS_ROOTS"),
    )  # fmt: skip
    node.add_argument(
        "--indexer-registry", type=address_arg, default=env_default("ATTESTMESH_INDEXER_REGISTRY"),
        help="IndexerRegistry address; omitted: no registry, events by polling "
        "(env ATTESTMESH_INDEXER_REGISTRY)",
    )  # fmt: skip
    node.add_argument(
        "--image", help="the sidecar image: ghcr.io/OWNER/attestmesh-sidecar@sha256:DIGEST pins the code the "
        "compose hash binds (pull_policy missing); a tag gets pull_policy always",
    )  # fmt: skip
    node.add_argument(
        "--template", default=None, help=f"the template (default: {COMPOSE_TEMPLATE} of this checkout)"
    )
    node.add_argument("--output", "-o", default=None, help="write here instead of standard output")
    pin = verbs.add_parser(
        "pin",
        help="the template with only the sidecar image set (the trust anchors stay ${VAR}): what the "
        "publish workflow prints, for deploy/node.sh COMPOSE=",
        description="Set the sidecar's image in the node compose template and the pull_policy after it "
        "(missing for an image pinned by digest, always for a tag); every other byte stays the template's, "
        "the trust anchors included (`attestmesh compose node` or deploy/node.sh renders them per cluster).",
    )
    pin.add_argument("--image", required=True, help="ghcr.io/OWNER/attestmesh-sidecar@sha256:DIGEST")
    pin.add_argument(
        "--template", default=None, help=f"the template (default: {COMPOSE_TEMPLATE} of this checkout)"
    )
    pin.add_argument("--output", "-o", default=None, help="write here instead of standard output")


def _add_indexer_parser(top: Subcommands[argparse.ArgumentParser]) -> None:
    op = top.add_parser("indexer", help="operate a shared indexer on a chain")
    op_verbs = op.add_subparsers(dest="verb", required=True)
    reg = op_verbs.add_parser(
        "register",
        help="write the indexer's endpoint, code id and public key (read from its /status) to the registry; "
        "sends nothing when the record already matches. The owner key comes from ATTESTMESH_OWNER_KEY.",
    )
    registry_options(reg)
    reg.add_argument("--status-url", required=True, help="the indexer's /status URL (public key and code id)")
    reg.add_argument(
        "--endpoint", default=None, help="ws(s):// endpoint to register (default: its public_url)"
    )
    reg.add_argument("--code-id", default=None, help="32-byte hex code id (default: the one on its /status)")
    reg.add_argument("--json", action="store_true", help="machine-readable output")
    status = op_verbs.add_parser(
        "status",
        help="print the indexer's /status document as it answers (JSON); exit 0 iff it shows a public key. "
        "An https:// URL is verified with $ATTESTMESH_CA_FILE too and sent to $ATTESTMESH_CONNECT_TO when "
        "set (see `attestmesh health --help`)",
    )
    status.add_argument("url", type=url_arg, help="the indexer's /status URL")
    status.add_argument("--json", action="store_true", help="accepted for uniformity: the output is JSON")
    ver = op_verbs.add_parser(
        "verify",
        help="the indexer's /healthz is healthy and IndexerRegistry.current() names what its /status says "
        "(endpoint, code id, public key); exit 0 iff so (reads only)",
        description="Check that the indexer is healthy and that the registry names it: the key, code id and "
        "endpoint its /status reports (or --endpoint / --code-id, as given to `indexer register`). With "
        "--wait, poll until that holds or SECONDS pass. Exit 0 when verified, 1 (every mismatch named) when "
        "not.",
    )
    registry_options(ver)
    ver.add_argument("--status-url", required=True, help="the indexer's /status URL")
    ver.add_argument("--health-url", required=True, help="the indexer's /healthz URL")
    ver.add_argument(
        "--endpoint", default=None, help="the endpoint the registry must name (default: its public_url)"
    )
    ver.add_argument(
        "--code-id", type=bytes32_arg, default=None, help="the code id it must name (default: its /status's)"
    )
    ver.add_argument(
        "--wait", type=wait_arg, default=0.0, metavar="SECONDS", help="poll this long (default 0: look once)"
    )
    ver.add_argument(
        "--interval", type=seconds_arg, default=2.0, metavar="SECONDS", help="between looks (default 2)"
    )
    ver.add_argument(
        "--json", action="store_true", help="machine-readable output: verified, problems, registry, status"
    )


def _add_chain_parser(top: Subcommands[argparse.ArgumentParser]) -> None:
    chain = top.add_parser("chain", help="read a cluster; the owner's allowlist and funding actions")
    chain_verbs = chain.add_subparsers(dest="verb", required=True)
    cs = chain_verbs.add_parser(
        "status",
        help="members (mesh IPs, endpoints), CSK commitment, IndexerRegistry.current(), compose allowlist",
        description="Read a cluster at the chain's head. The chain options can come from the sidecar's "
        "environment variables named in their help; the command line wins. The RPC URL is never shown "
        "beyond its scheme, host and port.",
    )
    chain_options(cs, cluster=True)
    cs.add_argument(
        "--registry",
        type=address_arg,
        default=env_default("ATTESTMESH_INDEXER_REGISTRY"),
        help="IndexerRegistry address; show current() (env ATTESTMESH_INDEXER_REGISTRY)",
    )
    cs.add_argument(
        "--compose-hash",
        type=bytes32_arg,
        action="append",
        default=[],
        metavar="0xHASH",
        help="say whether this compose hash is allowlisted (repeatable)",
    )
    cs.add_argument("--json", action="store_true", help="machine-readable output with full values")

    allow = chain_verbs.add_parser(
        "allow-compose",
        help="Cluster.addComposeHash, only when the hash is not allowlisted yet (key: ATTESTMESH_OWNER_KEY)",
        description="Allowlist a compose hash on the cluster (the cluster owner's transaction, key from "
        "ATTESTMESH_OWNER_KEY); sends nothing and says so when it is already allowlisted.",
    )
    chain_options(allow, cluster=True)
    allow.add_argument(
        "--compose-hash", type=bytes32_arg, required=True, metavar="0xHASH", help="the compose hash"
    )
    allow.add_argument("--json", action="store_true", help="machine-readable output")
    disallow = chain_verbs.add_parser(
        "disallow-compose",
        help="Cluster.removeComposeHash, only while the hash is allowlisted (key: ATTESTMESH_OWNER_KEY)",
        description="Take a compose hash off the cluster's allowlist (the cluster owner's transaction, key "
        "from ATTESTMESH_OWNER_KEY): a node running that compose drops to boot_gate, a CVM booting it is "
        "refused keys. Sends nothing and says so when it is not allowlisted. Retire a compose only once no "
        "node runs it (deploy/node.sh update does this after a roll).",
    )
    chain_options(disallow, cluster=True)
    disallow.add_argument(
        "--compose-hash", type=bytes32_arg, required=True, metavar="0xHASH", help="the compose hash"
    )
    disallow.add_argument("--json", action="store_true", help="machine-readable output")
    app = chain_verbs.add_parser(
        "member-app",
        help="a node's app contract (CREATE2 factory) and its pre-approved app id, each only when missing",
        description="Make node NAME's app contract exist (the member app factory's CREATE2 address for the "
        "cluster and NAME) and its app id pre-approved on the cluster (Cluster.addAllowedAppId; not needed "
        "once the node is a member): the cold-start rule, done before the node's first boot. Sends nothing "
        "and says so when both hold. Key: ATTESTMESH_OWNER_KEY.",
    )
    chain_options(app, cluster=True)
    app.add_argument(
        "--factory", type=address_arg,
        help="ClusterMemberAppFactory address (env ATTESTMESH_MEMBER_APP_FACTORY)",
        **from_env("ATTESTMESH_MEMBER_APP_FACTORY"),
    )  # fmt: skip
    app.add_argument("--name", type=node_name_arg, required=True, help="the node's name (the CREATE2 salt)")
    shape = app.add_mutually_exclusive_group()
    shape.add_argument("--shell", action="store_true", help="print MEMBER_APP_ID=0x... for a shell's eval")
    shape.add_argument("--json", action="store_true", help="machine-readable output")
    _add_fund_parser(chain_verbs)
    _add_scrape_targets_parser(chain_verbs)
    _add_rotate_parser(chain_verbs)


def _add_rotate_parser(chain_verbs: Subcommands[argparse.ArgumentParser]) -> None:
    rotate = chain_verbs.add_parser(
        "rotate-csk",
        help="Cluster.rotateCsk: start the next CSK epoch (or, with --on-remove, set rotate-on-remove)",
        description="Start the cluster's next CSK epoch (the owner's transaction, key from "
        "ATTESTMESH_OWNER_KEY): the originator commits the new key, every member acquires it, an evicted "
        "member is refused it, and members keep the previous key for ATTESTMESH_CSK_GRACE so applications "
        "can re-encrypt. With --on-remove on|off, only set whether every removeMember also rotates "
        "(Cluster.setRotateCskOnRemove; sends nothing when it already says so).",
    )
    chain_options(rotate, cluster=True)
    rotate.add_argument(
        "--on-remove", choices=("on", "off"), help="set rotate-on-remove instead of rotating now"
    )
    rotate.add_argument("--json", action="store_true", help="machine-readable output")


def _add_scrape_targets_parser(chain_verbs: Subcommands[argparse.ArgumentParser]) -> None:
    targets = chain_verbs.add_parser(
        "scrape-targets",
        help="write Prometheus target files (file_sd) of the members and the indexer, through the gateway",
        description="Read the cluster's members (and, with --registry, the registered indexer) and write "
        "OUT_DIR/nodes.json and OUT_DIR/indexer.json for deploy/monitoring/prometheus.yml: each member's "
        "https://<app id>-9090.<gateway domain>/metrics, the indexer's endpoint host on 443, labelled with "
        "the cluster and the app id as instance. Atomic writes: run it from cron; Prometheus re-reads them.",
    )
    chain_options(targets, cluster=True)
    targets.add_argument(
        "--registry",
        type=address_arg,
        default=env_default("ATTESTMESH_INDEXER_REGISTRY"),
        help="IndexerRegistry address: also the indexer's target (env ATTESTMESH_INDEXER_REGISTRY)",
    )
    targets.add_argument(
        "--gateway-domain", required=True, help="the dstack gateway's domain, e.g. dstack-prod5.phala.network"
    )
    targets.add_argument("--out-dir", type=Path, required=True, help="the target files' directory")


def _add_fund_parser(chain_verbs: Subcommands[argparse.ArgumentParser]) -> None:
    fund = chain_verbs.add_parser(
        "fund",
        help="send --amount ETH to an account only while its balance is below --min-balance",
        description="Top up an account (a node's signer): send AMOUNT only when its balance is below "
        "MIN_BALANCE, else send nothing and say so. The funding key is ATTESTMESH_FUNDER_KEY, or "
        "ATTESTMESH_OWNER_KEY when that is not set.",
    )
    chain_options(fund, cluster=False)
    fund.add_argument("--to", type=account_arg, required=True, metavar="0xADDRESS", help="the account")
    fund.add_argument(
        "--min-balance", type=eth_arg, required=True, metavar="ETH", help="fund only below this balance"
    )
    fund.add_argument(
        "--amount",
        type=positive_eth_arg,
        required=True,
        metavar="ETH",
        help="how much to send (more than 0)",
    )
    fund.add_argument("--json", action="store_true", help="machine-readable output")


def _add_cluster_parser(top: Subcommands[argparse.ArgumentParser]) -> None:
    cluster = top.add_parser(
        "cluster", help="a whole cluster at a glance: the chain and every member's /healthz"
    )
    verbs = cluster.add_subparsers(dest="verb", required=True)
    status = verbs.add_parser(
        "status",
        help="every member (from the chain) and its /healthz through the gateway, in one table; exit 0 only "
        "when every member is healthy and agrees with the chain",
        description="Read the cluster's members from the chain at its head, then every member's /healthz "
        "through the dstack gateway (https://<app id>-<port>.<gateway domain>/healthz), concurrently, each "
        "request within --health-timeout. Print one table (member, app id, phase, reason, live peers, "
        "transport, membership digest and CSK commitment each against the chain, version, signer balance) "
        "and a summary line, or with --json the document described in docs/operations.md. Exit 0 only when "
        "every member answers healthy (HTTP 200), its membership digest equals the digest of the chain's "
        "member list, its CSK commitment equals the chain's (and its signer holds --min-balance, when "
        "given); 1 otherwise, the summary naming each failing member and why; 2 for bad arguments. An "
        "answer that is not a health document (malformed, oversized, too slow) is that member's failure. "
        'On the devnet: set -a; eval "$(attestmesh devnet env)"; set +a; then --gateway-domain '
        "$GATEWAY_DOMAIN --ca-file $GATEWAY_CA_FILE --connect-to $GATEWAY_ADDRESS.",
    )
    chain_options(status, cluster=True)
    status.add_argument(
        "--gateway-domain",
        type=domain_arg,
        metavar="DOMAIN",
        help="the dstack gateway's domain the members are reached under (env ATTESTMESH_GATEWAY_DOMAIN, "
        "the sidecar's own variable)",
        **from_env("ATTESTMESH_GATEWAY_DOMAIN"),
    )
    status.add_argument(
        "--ca-file",
        type=ca_file_arg,
        default=env_default("ATTESTMESH_CA_FILE"),
        metavar="PEM",
        help="trust these CAs too (env ATTESTMESH_CA_FILE; the devnet's lab CA: GATEWAY_CA_FILE of "
        "`devnet env`)",
    )
    status.add_argument(
        "--connect-to",
        type=connect_to_arg,
        default=env_default("ATTESTMESH_CONNECT_TO"),
        metavar="ADDRESS[:PORT]",
        help="connect to this address (and port) instead of resolving the members' names, which still name "
        "the server (SNI, certificate, Host), like curl --connect-to (env ATTESTMESH_CONNECT_TO; the "
        "devnet's gateway: GATEWAY_ADDRESS of `devnet env`)",
    )
    status.add_argument(
        "--health-port",
        type=port_arg,
        default=HEALTH_PORT,
        metavar="PORT",
        help=f"the members' health port as the gateway names it (default {HEALTH_PORT})",
    )
    status.add_argument(
        "--health-timeout",
        type=seconds_arg,
        default=HEALTH_TIMEOUT,
        metavar="SECONDS",
        help=f"the whole of each member's request (default {HEALTH_TIMEOUT:g})",
    )
    status.add_argument(
        "--min-balance",
        type=eth_arg,
        default=None,
        metavar="ETH",
        help="a member whose signer holds less fails (default: balances shown, not checked)",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output (docs/operations.md)")


def _add_health_parser(top: Subcommands[argparse.ArgumentParser]) -> None:
    health = top.add_parser(
        "health",
        help="a node's /healthz, readable; exit 0 iff healthy",
        description="GET a node's /healthz (for example through the dstack gateway) and print it. Exit 0 "
        "when the node is healthy (HTTP 200), 1 when it is not (the body is still printed), does not answer, "
        "or does not answer with a health document.",
    )
    health.add_argument("url", type=url_arg, help="the node's /healthz URL")
    health.add_argument("--json", action="store_true", help="print the body exactly as the node sent it")
    health.add_argument(
        "--ca-file",
        metavar="PEM",
        help="trust these CAs too for an https:// URL (default: $ATTESTMESH_CA_FILE; the devnet's lab CA "
        "is in state.json gateway.ca_file)",
    )
    health.add_argument(
        "--connect-to",
        metavar="ADDRESS",
        help="connect to ADDRESS instead of resolving the URL's host, which still names the server (SNI, "
        "certificate, Host), like curl --connect-to (default: $ATTESTMESH_CONNECT_TO; the devnet's "
        "gateway address is state.json gateway.address)",
    )
    health.add_argument(
        "--timeout",
        type=seconds_arg,
        default=HEALTH_TIMEOUT,
        metavar="SECONDS",
        help=f"to connect, and per read (default {HEALTH_TIMEOUT:g})",
    )
