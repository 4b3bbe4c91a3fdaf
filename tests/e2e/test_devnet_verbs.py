"""Two operator verbs of the devnet against a running lab (issue 10, item 8):

- ``attestmesh devnet env NODE --sidecar`` prints exactly the node's sidecar environment: parsed, it passes
  ``sidecar.settings.load_settings`` (the plain ``env NODE`` output is the lab's facts for a shell, not a
  sidecar's environment: it lacks the node's endpoint, state and sockets);
- ``attestmesh devnet node exec NAME -- CMD`` runs CMD in the node's network namespace with the node's
  WireGuard socket directory at /run/wireguard: ``wg show`` lists the node's peers (a bare ``ip netns exec
  NS wg show`` sees nothing), and the command's exit status passes through.
"""

from __future__ import annotations

import shlex

import pytest

from sidecar.settings import SettingsError, load_settings
from tests.e2e.lab import LabCli, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

IFNAME = "attestmesh0"


def parse_lines(text: str) -> dict[str, str]:
    pairs = (shlex.split(line)[0].partition("=") for line in text.splitlines() if line)
    return {key: value for key, _, value in pairs}


def test_env_sidecar_is_a_sidecar_environment_and_node_exec_sees_the_node_device(lab: LabCli) -> None:
    lab.run("up", "--nodes", "2", "--no-indexer")
    lab.run("status", "--wait-healthy", "120")

    sidecar_env = parse_lines(lab.run("env", "node-1", "--sidecar").stdout)
    load_settings(sidecar_env)  # no SettingsError: every variable is one the sidecar knows and accepts
    node = next(n for n in lab.status()["nodes"] if n["name"] == "node-1")
    assert sidecar_env["ATTESTMESH_WG_UAPI_DIR"] == node["wg_uapi_dir"]
    plain = parse_lines(lab.run("env", "node-1").stdout)
    with pytest.raises(SettingsError):  # the defect this verb answers
        load_settings({k: v for k, v in plain.items() if k.startswith("ATTESTMESH_")})

    keys = {
        name: lab.run("node", "exec", name, "--", "wg", "show", IFNAME, "public-key").stdout.strip()
        for name in ("node-1", "node-2")
    }
    assert all(keys.values()) and keys["node-1"] != keys["node-2"]

    def peers() -> list[str]:
        return lab.run("node", "exec", "node-1", "--", "wg", "show", IFNAME, "peers").stdout.split()

    wait_until(lambda: peers() == [keys["node-2"]], 60, "node-1's device to list node-2 as its one peer")

    failed = lab.run("node", "exec", "node-1", "--", "sh", "-c", "exit 7", check=False)
    assert failed.returncode == 7
    missing = lab.run("node", "exec", "node-9", "--", "true", check=False)
    assert missing.returncode == 2 and "node-9" in missing.stderr
