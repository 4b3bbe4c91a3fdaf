"""``deploy/lib.sh``, sourced by a real bash as the routines source it: timestamped step logging, redaction of
secrets from the log and the console, exit codes of failing steps, and the state files that make a routine
re-entrant. Log and state directories are temporary; the secrets are made up for the test.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.component, pytest.mark.timeout(60)]

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "deploy" / "lib.sh"
OWNER_KEY = "0x" + "5e" * 32  # not a real key: only its value matters here
API_KEY = "phala-api-key-for-the-test"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def run(script: str, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "DEPLOY_LOG_DIR": str(tmp_path / "logs"),
        "DEPLOY_STATE_DIR": str(tmp_path / "state"),
        "ATTESTMESH_OWNER_KEY": OWNER_KEY,
        "PHALA_CLOUD_API_KEY": API_KEY,
        "ATTESTMESH_RPC_URL": "https://rpc.example/v2/abcdef123456",
        **extra,
    }
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source {LIB}; deploy_init node.sh node-3 all; {script}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "logs" / "node.sh-node-3.log").read_text()


def test_every_step_is_logged_with_a_utc_timestamp_and_no_secret_reaches_log_or_console(
    tmp_path: Path,
) -> None:
    leak = (
        'echo "owner $ATTESTMESH_OWNER_KEY bare ${ATTESTMESH_OWNER_KEY#0x}"; '
        'echo "api $PHALA_CLOUD_API_KEY rpc $ATTESTMESH_RPC_URL"; '
        'echo "basic auth https://operator:hunter2@gateway.example/healthz"'
    )
    done = run(f"deploy_step leak bash -c '{leak}'; deploy_log finished", tmp_path)
    assert done.returncode == 0, done.stderr
    text = log_text(tmp_path)
    for output in (text, done.stderr):
        for secret in (OWNER_KEY, OWNER_KEY[2:], API_KEY, "abcdef123456", "hunter2", "operator:"):
            assert secret not in output
        assert output.count("<redacted>") == 5  # owner, bare owner, api key, rpc url, userinfo
    lines = text.splitlines()
    assert re.fullmatch(rf"{STAMP} node.sh node-3 all: run started \(pid \d+, provider devnet\)", lines[0])
    assert re.fullmatch(rf"{STAMP} node.sh node-3 all: step leak started", lines[1])
    assert all(re.match(rf"{STAMP}   \| ", line) for line in lines[2:5])  # the step's own output
    assert re.fullmatch(rf"{STAMP} node.sh node-3 all: step leak done", lines[5])
    assert lines[6].endswith("all: finished")
    assert stat.S_IMODE((tmp_path / "logs" / "node.sh-node-3.log").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700


def test_redaction_ignores_letter_case_and_covers_the_sealed_env_file_and_added_names(
    tmp_path: Path,
) -> None:
    """Issue 12: exact-string matching let an upper-cased key, a value only in ENV_FILE, and (with
    DEPLOY_SECRET_VARS set) every default name through; now all are redacted, short flags stay readable."""
    env_file = tmp_path / "sealed.env"
    env_file.write_text(
        "# the node's sealed env\n"
        "ATTESTMESH_RPC_URLS=https://a.example/k/sealed-key-one,https://b.example/k/sealed-key-two\n"
        "export ALCHEMY_TOKEN='quoted-sealed-token-42'\n"
        "ATTESTMESH_RPC_ALLOW_HTTP=true\n"
    )
    leak = (
        'echo "upper $(printf %s "$ATTESTMESH_OWNER_KEY" | tr a-f A-F)"; '
        'echo "api ${PHALA_CLOUD_API_KEY^^}"; '
        'echo "one https://b.example/k/sealed-key-two and QUOTED-SEALED-TOKEN-42"; '
        'echo "extra $MY_EXTRA_SECRET allow true"'
    )
    done = run(
        f"deploy_step leak bash -c '{leak}'",
        tmp_path,
        ENV_FILE=str(env_file),
        DEPLOY_SECRET_VARS="MY_EXTRA_SECRET",
        MY_EXTRA_SECRET="extra-secret-value",
    )
    assert done.returncode == 0, done.stderr
    for output in (log_text(tmp_path), done.stderr):
        lowered = output.lower()
        sealed = ("sealed-key-two", "quoted-sealed-token-42", "extra-secret-value")
        for secret in (OWNER_KEY[2:], API_KEY, *sealed):
            assert secret not in lowered, secret
        assert output.count("<redacted>") == 5  # upper owner key, upper api key, url, token, extra
        assert "allow true" in output  # a short flag of the sealed env is not a secret worth blanking


def test_a_failing_step_returns_its_exit_code_and_is_logged_as_failed(tmp_path: Path) -> None:
    done = run("deploy_step broken bash -c 'echo half way; exit 3' || echo \"rc=$?\"", tmp_path)
    assert done.returncode == 0 and "rc=3" in done.stdout
    assert re.search(rf"{STAMP} node.sh node-3 all: step broken failed \(exit 3\)", log_text(tmp_path))
    stopped = run("deploy_step broken false; echo not reached", tmp_path)  # set -e still stops the routine
    assert stopped.returncode == 1 and "not reached" not in stopped.stdout
    failed = run("deploy_fail 'node-3 is not healthy after 300 s'", tmp_path)
    assert failed.returncode == 1 and "FAILED: node-3 is not healthy after 300 s" in log_text(tmp_path)


def test_state_files_survive_a_run_and_are_replaced_atomically(tmp_path: Path) -> None:
    first = run("deploy_state_set compose_hash 0xabc; deploy_state_set step allowlisted", tmp_path)
    assert first.returncode == 0, first.stderr
    again = run(
        "deploy_state_get compose_hash; deploy_state_get step; deploy_state_get missing || echo none",
        tmp_path,
    )
    assert again.stdout.split() == ["0xabc", "allowlisted", "none"]
    state = tmp_path / "state" / "node.sh-node-3"
    assert sorted(p.name for p in state.iterdir()) == ["compose_hash", "step"]  # no temp file left behind
    run("deploy_state_clear step", tmp_path)
    assert sorted(p.name for p in state.iterdir()) == ["compose_hash"]
    run("deploy_state_clear", tmp_path)
    assert not state.exists()
