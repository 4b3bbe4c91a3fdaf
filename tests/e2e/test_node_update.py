"""Day-2 node updates on the devnet, driven the way ``deploy/node.sh`` will drive them: ``node prepare``
learns the new compose hash without touching anything, ``node update`` without allowlisting is denied at
the KMS boot gate (the golden rule: allowlist first), ``chain allow-compose`` (owner key from the
environment, chain options from ``devnet env`` through a shell's eval) lets the same update through with
the node's identity carried over, a second update is a no-op, and ``node reboot`` power-cycles a CVM.
Asserted through /healthz, the state file (process records), the sidecar's log and chain reads."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devnet.anvil import DEVNET_DEPLOYER_KEY
from devnet.compose import NodeAnchors, compose_hash, encode_app_compose, node_app_compose, node_compose_bytes
from devnet.lab import fetch_healthz
from sidecar.chain.rpc import checksum
from sidecar.core.ids import Address, Bytes32
from tests.e2e.lab import REPO, LabCli, chain, lab_state, log_entries, wait_until
from tests.e2e.mesh import wait_all_healthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

#: What a deploy routine does for `update` before it applies anything (the devnet provider): read the lab's
#: chain variables and the node's facts, learn the compose hash, allowlist it when needed.
#: (An assignment first, so that `set -e` sees a failing command; `eval "$(cmd)"` alone would hide it.)
ALLOWLIST_FIRST = """\
set -euo pipefail
am() { "$PYTHON" -m devnet.cli "$@"; }
facts=$(am devnet env "$NODE"); set -a; eval "$facts"; set +a
echo "before: running=$NODE_RUNNING boot=$NODE_BOOT"
plan=$(am devnet node prepare "$NODE" --compose-file "$COMPOSE" --shell); eval "$plan"
if [ "$COMPOSE_ALLOWLISTED" = 0 ]; then am chain allow-compose --compose-hash "$COMPOSE_HASH"; fi
am chain allow-compose --compose-hash "$COMPOSE_HASH"  # the step re-run: sends nothing
"""


def shell_values(text: str) -> dict[str, str]:
    """The ``KEY=value`` lines the CLI prints for a shell's eval, unquoted as the shell would."""
    values = {}
    for line in text.splitlines():
        key, _, quoted = line.partition("=")
        values[key] = "".join(shlex.split(quoted))
    return values


def processes(lab: LabCli, name: str) -> dict[str, Any]:
    node = next(n for n in lab_state(lab)["nodes"] if n["name"] == name)
    return dict(node["processes"])


def csk_source(member_id: str, originator: str) -> str:
    """Where a rebooted node gets the CSK when its state directory carried over: the originator re-derives
    it, every other member reads its sealed cache (a node that lost its state would pull it: "peer")."""
    return "derived" if member_id == originator else "cache"


def registrations(lab: LabCli, name: str) -> int:
    return len(log_entries(lab, f"{name}-sidecar", "registration.attempted"))


def test_update_is_denied_until_allowlisted_then_keeps_identity_and_reboot_recovers(
    lab: LabCli, tmp_path: Path
) -> None:
    lab.run("up", "--nodes", "3")
    found = wait_all_healthy(lab)
    node2, node3 = found["node-2"], found["node-3"]
    before2, before3 = node2.healthz()["node"], node3.healthz()["node"]
    signer2 = Address.from_hex(before2["signer"])
    members = chain(lab, lambda conn, c: c.member_count())
    originator = str(chain(lab, lambda conn, c: c.originator()))
    nonce2 = chain(lab, lambda conn, c: conn.w3.eth.get_transaction_count(checksum(signer2)))
    assert registrations(lab, "node-2") == 1
    old_hash = node2.data["compose_hash"]
    compose = tmp_path / "app-compose.json"
    compose.write_bytes(
        encode_app_compose(
            node_app_compose(NodeAnchors.of_lab(lab.state()), extra_envs=("ATTESTMESH_EXTRA_SETTING",))
        )
    )
    new_hash = str(compose_hash(compose.read_bytes()))
    assert new_hash != old_hash
    running2 = processes(lab, "node-2")

    # 1. prepare: the new hash, not allowlisted; nothing of the node or the chain changes.
    prepare = ("node", "prepare", "node-2", "--compose-file", str(compose))
    assert json.loads(lab.run(*prepare, "--json").stdout) == {
        "node": "node-2",
        "exists": True,
        "compose_hash": new_hash,
        "allowlisted": False,
        "current_compose_hash": old_hash,
        "changes": True,
    }
    human = lab.run(*prepare).stdout
    assert f"compose {new_hash} NOT allowlisted" in human and f"it now has {old_hash}" in human
    assert (lab.root / "nodes" / "node-2" / "app-compose.json").read_bytes() == node_compose_bytes(
        NodeAnchors.of_lab(lab.state())
    )
    assert processes(lab, "node-2") == running2 and node2.healthy()

    # 2. update without allowlisting: the gate denies the new compose hash; node-2 stays off, the rest run.
    denied = lab.run("node", "update", "node-2", "--compose-file", str(compose), check=False)
    assert denied.returncode == 1, denied.stderr
    assert f"updated compose {old_hash} -> {new_hash}; boot denied: compose hash not allowed" in denied.stdout
    assert "the node is off" in denied.stdout
    assert "denied at the KMS boot gate (compose hash not allowed)" in denied.stderr
    assert "`attestmesh chain allow-compose`" in denied.stderr
    status2 = next(n for n in lab.status()["nodes"] if n["name"] == "node-2")
    assert status2["boot"] == "denied: compose hash not allowed"
    assert status2["compose_hash"] == new_hash and status2["processes"] == {}
    assert not any(status2["running"][k] for k in ("node", "simulator", "wireguard", "sidecar"))
    assert status2["healthz"] is None and fetch_healthz(node2.data["health_url"], timeout=2.0) is None
    assert (lab.root / "nodes" / "node-2" / "app-compose.json").read_bytes() == compose.read_bytes()
    for other in (found["node-1"], node3):
        wait_until(other.healthy, 30, f"{other.name} healthy while node-2 is denied")

    # 3. Allowlist first, as the deploy routine will: chain options from `devnet env`, the owner key from the
    # environment; the second allow-compose sends nothing.
    env = {
        **lab.env,
        "ATTESTMESH_OWNER_KEY": "0x" + DEVNET_DEPLOYER_KEY.reveal().hex(),
        "PYTHON": sys.executable,
        "NODE": "node-2",
        "COMPOSE": str(compose),
    }
    script = subprocess.run(
        ["bash", "-c", ALLOWLIST_FIRST],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert script.returncode == 0, script.stderr[-3000:]
    out = script.stdout.splitlines()
    assert out[0] == "before: running=0 boot=denied: compose hash not allowed"
    where = f"compose hash {new_hash} on cluster {lab_state(lab)['cluster']}"
    assert re.fullmatch(rf"{where}: allowlisted \(tx 0x[0-9a-f]{{64}}\)", out[1]), out
    assert out[2:] == [f"{where}: already allowlisted; nothing changed"]
    assert chain(lab, lambda conn, c: c.allowed_compose_hash(Bytes32.from_hex(new_hash)))
    assert DEVNET_DEPLOYER_KEY.reveal().hex() not in (script.stdout + script.stderr).lower()

    # 4. The same update again: node-2 boots with the new compose and its identity; no new registration.
    applied = lab.run("node", "update", "node-2", "--compose-file", str(compose)).stdout
    assert f"updated compose {new_hash}; boot allowed; running, state kept" in applied
    wait_until(node2.healthy, 60, "node-2 healthy after the update")
    after2 = node2.healthz()["node"]
    assert after2["member_id"] == before2["member_id"] and after2["mesh_ip"] == before2["mesh_ip"]
    assert after2["compose_hash"] == new_hash
    assert node2.healthz()["csk"]["source"] == csk_source(before2["member_id"], originator)
    assert chain(lab, lambda conn, c: c.member_count()) == members
    assert chain(lab, lambda conn, c: conn.w3.eth.get_transaction_count(checksum(signer2))) == nonce2
    assert registrations(lab, "node-2") == 1
    facts = shell_values(lab.run("env", "node-2").stdout)
    assert facts["NODE_RUNNING"] == "1" and facts["NODE_HEALTHY"] == "1" and facts["NODE_BOOT"] == "allowed"
    assert facts["NODE_MEMBER_ID"] == before2["member_id"] and facts["NODE_COMPOSE_HASH"] == new_hash

    # 5. And once more: already running this compose, allowed: nothing is restarted.
    running2 = processes(lab, "node-2")
    again = lab.run("node", "update", "node-2", "--compose-file", str(compose)).stdout
    assert again == f"node node-2: already runs compose {new_hash} (allowed); nothing changed\n"
    assert processes(lab, "node-2") == running2 and node2.healthy()

    # 6. A CVM reboot of node-3: every process of it is new, its identity is the same.
    running3 = processes(lab, "node-3")
    rebooted = lab.run("node", "reboot", "node-3").stdout
    assert rebooted == "node node-3: rebooted; boot allowed\n"
    now3 = processes(lab, "node-3")
    assert now3.keys() == running3.keys() == {"simulator", "wireguard", "sidecar"}
    assert all(now3[k]["pid"] != running3[k]["pid"] for k in now3)
    wait_until(node3.healthy, 60, "node-3 healthy after the reboot")
    assert node3.healthz()["node"]["member_id"] == before3["member_id"]
    assert node3.healthz()["csk"]["source"] == csk_source(before3["member_id"], originator)
    assert registrations(lab, "node-3") == 1
    assert chain(lab, lambda conn, c: c.member_count()) == members
    wait_all_healthy(lab)
