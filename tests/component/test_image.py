"""What the image runs, without a Docker engine: the venv the Dockerfile builds, and the commands it declares.

The virtualenv is built by scripts/build-venv.sh -- the very recipe the Dockerfile's build stage runs -- in a
temporary directory (non-editable, from PyPI through pip and its cache; ~30 s). Every command runs from a
directory outside the checkout, so only the installed package can answer: the Dockerfile's ENTRYPOINT and
the indexer's compose entrypoint with no configuration (exit 2, every problem listed), the contract artifacts
the installed package carries, and the HEALTHCHECK command against a real aiohttp server on 127.0.0.1
answering 200, 503, nothing at all, or too late.

Every server started here is stopped here; the venv and the working directories are removed afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from devnet.anvil import AnvilProcess
from devnet.deployment import Deployment
from tests import dockerfile
from tests.component.conftest import CHAIN_ID

pytestmark = [pytest.mark.component, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
BUILD_VENV = REPO / "scripts" / "build-venv.sh"
ARTIFACTS = REPO / "contracts" / "artifacts"
SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Runtime:
    venv: Path
    workdir: Path  # outside the checkout: the cwd of every command

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def image_env(self, **extra: str) -> dict[str, str]:
        """The environment the image gives its processes (its ENV PATH), plus ``extra``; nothing else."""
        return {"PATH": f"{self.bin}:{SYSTEM_PATH}", **extra}


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    with tempfile.TemporaryDirectory(prefix="attestmesh-image-") as tmp:
        venv = Path(tmp) / "venv"
        started = time.monotonic()
        built = subprocess.run(
            ["bash", str(BUILD_VENV), str(venv)],
            env={**os.environ, "PYTHON": sys.executable},
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=540,
            check=False,
        )
        assert built.returncode == 0, f"build-venv.sh failed:\n{built.stdout}\n{built.stderr}"
        print(f"venv built in {time.monotonic() - started:.1f} s")
        workdir = Path(tmp) / "cwd"
        workdir.mkdir()
        yield Runtime(venv=venv, workdir=workdir)


def _run(runtime: Runtime, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=runtime.workdir, capture_output=True, text=True, timeout=60, check=False
    )


def _problems(stderr: str) -> list[str]:
    return [line.strip()[2:] for line in stderr.splitlines() if line.strip().startswith("- ")]


def test_the_venv_holds_an_installed_not_an_editable_package(runtime: Runtime) -> None:
    probe = (
        "import json, sidecar, indexer, ops; print(json.dumps([m.__file__ for m in (sidecar, indexer, ops)]))"
    )
    result = _run(runtime, [str(runtime.bin / "python"), "-c", probe], env={})
    assert result.returncode == 0, result.stderr
    for path in json.loads(result.stdout):
        assert Path(path).is_relative_to(runtime.venv), path
    for script in ("attestmesh-sidecar", "attestmesh-indexer", "attestmesh"):
        assert (runtime.bin / script).is_file(), script
    dev_tool = _run(runtime, [str(runtime.bin / "python"), "-c", "import pytest"], env={})
    assert dev_tool.returncode != 0, "the runtime venv must not carry the dev extras"


def test_the_venv_has_no_installers_and_no_wgconfig(runtime: Runtime) -> None:
    probe = (
        "import importlib.util, json\n"
        "print(json.dumps([m for m in ('pip', 'setuptools', 'pkg_resources', 'wgconfig')"
        " if importlib.util.find_spec(m)]))"
    )
    result = _run(runtime, [str(runtime.bin / "python"), "-c", probe], env={})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert not list(runtime.bin.glob("pip*")), sorted(p.name for p in runtime.bin.iterdir())


def test_an_installation_without_a_build_record_says_unknown(runtime: Runtime) -> None:
    # Outside a checkout and without the image's build record, the commit is not guessed.
    result = _run(runtime, [str(runtime.bin / "attestmesh"), "--version"], env=runtime.image_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("(commit unknown, from unknown)"), result.stdout


def test_sidecar_with_an_empty_environment_exits_2_listing_every_problem(runtime: Runtime) -> None:
    result = _run(runtime, [str(runtime.bin / "attestmesh-sidecar")], env={})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "invalid configuration" in result.stderr
    problems = " ".join(_problems(result.stderr))
    for name in ("ATTESTMESH_RPC_URL", "ATTESTMESH_CHAIN_ID", "ATTESTMESH_CLUSTER", "ATTESTMESH_ENDPOINT"):
        assert name in problems, result.stderr


def test_the_dockerfile_entrypoint_resolves_to_the_sidecar(runtime: Runtime) -> None:
    result = _run(runtime, dockerfile.entrypoint(), env=runtime.image_env())
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("attestmesh-sidecar: invalid configuration"), result.stderr


def test_a_compose_command_passed_to_the_sidecar_entrypoint_is_refused(runtime: Runtime) -> None:
    # `command: [attestmesh-indexer]` under the sidecar's entrypoint must not start the sidecar quietly.
    result = _run(runtime, [*dockerfile.entrypoint(), "attestmesh-indexer"], env=runtime.image_env())
    assert result.returncode == 2
    assert "takes no arguments" in result.stderr
    assert "entrypoint: [attestmesh-indexer]" in result.stderr


def test_indexer_with_an_empty_environment_exits_2_listing_every_problem(runtime: Runtime) -> None:
    result = _run(runtime, [str(runtime.bin / "attestmesh-indexer")], env={})
    assert result.returncode == 2, result.stdout + result.stderr
    problems = " ".join(_problems(result.stderr))
    for name in (
        "ATTESTMESH_INDEXER_RPC_URL",
        "ATTESTMESH_INDEXER_CHAIN_ID",
        "ATTESTMESH_INDEXER_START_BLOCK",
    ):
        assert name in problems, result.stderr


def test_the_indexer_compose_entrypoint_resolves_in_the_image(runtime: Runtime) -> None:
    compose = yaml.safe_load((REPO / "compose" / "indexer.yaml").read_text(encoding="utf-8"))
    result = _run(runtime, compose["services"]["indexer"]["entrypoint"], env=runtime.image_env())
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("attestmesh-indexer: invalid configuration"), result.stderr


def test_the_installed_package_carries_the_contract_artifacts(runtime: Runtime) -> None:
    probe = (
        "import json\n"
        "from sidecar.chain.artifacts import CONTRACT_NAMES, artifacts_dir, load_artifact\n"
        "cluster = load_artifact('Cluster')\n"
        "loaded = [load_artifact(name).name for name in CONTRACT_NAMES]\n"
        "print(json.dumps({'dir': str(artifacts_dir()), 'loaded': loaded,\n"
        "                  'functions': len(cluster.entries('function')), 'code': len(cluster.bytecode)}))\n"
    )
    result = _run(runtime, [str(runtime.bin / "python"), "-c", probe], env={})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    packaged = Path(report["dir"])
    assert packaged.is_relative_to(runtime.venv), packaged
    assert sorted(report["loaded"]) == sorted(path.stem for path in ARTIFACTS.glob("*.json"))
    assert report["functions"] > 0 and report["code"] > 0
    for committed in ARTIFACTS.glob("*.json"):
        assert (packaged / committed.name).read_bytes() == committed.read_bytes(), committed.name


# --- the health probe ---------------------------------------------------------------------------------


@dataclass
class HealthServer:
    """A real aiohttp server on 127.0.0.1 whose ``/healthz`` answers as told."""

    port: int = 0
    status: int = 200
    hang: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def healthz(self, _request: web.Request) -> web.Response:
        if self.hang:
            await self.release.wait()
        body = {
            "healthy": self.status == 200,
            "phase": "test",
            "reason": None if self.status == 200 else "test",
        }
        return web.json_response(body, status=self.status)


@pytest.fixture
async def health_server() -> AsyncIterator[HealthServer]:
    server = HealthServer()
    app = web.Application()
    app.router.add_get("/healthz", server.healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        server.release.set()
        await runner.cleanup()


async def _probe(runtime: Runtime, argv: list[str], env: dict[str, str]) -> tuple[int, str, float]:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=runtime.workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode(), time.monotonic() - started


def _healthcheck_env(runtime: Runtime, port: int) -> dict[str, str]:
    # The sidecar's default listens on the wildcard; the probe must turn that into loopback.
    return runtime.image_env(ATTESTMESH_HEALTH_ADDR=f"0.0.0.0:{port}")


async def test_healthcheck_passes_when_healthz_answers_200(
    runtime: Runtime, health_server: HealthServer
) -> None:
    _, command = dockerfile.healthcheck()
    code, output, _ = await _probe(runtime, command, _healthcheck_env(runtime, health_server.port))
    assert code == 0, output
    assert output.startswith("healthy: "), output


async def test_healthcheck_fails_when_healthz_answers_503(
    runtime: Runtime, health_server: HealthServer
) -> None:
    health_server.status = 503
    _, command = dockerfile.healthcheck()
    code, output, _ = await _probe(runtime, command, _healthcheck_env(runtime, health_server.port))
    assert code == 1, output
    assert "503" in output


async def test_healthcheck_fails_when_nothing_listens(runtime: Runtime) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    _, command = dockerfile.healthcheck()
    code, output, _ = await _probe(runtime, command, _healthcheck_env(runtime, closed_port))
    assert code == 1, output
    assert output.startswith("unhealthy: no answer"), output


async def test_healthcheck_gives_up_before_docker_kills_it(
    runtime: Runtime, health_server: HealthServer
) -> None:
    health_server.hang = True
    options, command = dockerfile.healthcheck()
    code, output, elapsed = await _probe(runtime, command, _healthcheck_env(runtime, health_server.port))
    assert code == 1, output
    assert elapsed < dockerfile.seconds(options["timeout"]), f"took {elapsed:.1f} s: Docker would kill it"


async def test_compose_healthchecks_run_in_the_image(runtime: Runtime, health_server: HealthServer) -> None:
    node = yaml.safe_load((REPO / "compose" / "node.yaml").read_text(encoding="utf-8"))
    indexer = yaml.safe_load((REPO / "compose" / "indexer.yaml").read_text(encoding="utf-8"))
    node_test = node["services"]["sidecar"]["healthcheck"]["test"]
    code, output, _ = await _probe(runtime, node_test[1:], _healthcheck_env(runtime, health_server.port))
    assert code == 0, output
    # The indexer's probe names its URL; point it at the test server instead of the fixed 8080.
    indexer_test = indexer["services"]["indexer"]["healthcheck"]["test"]
    retargeted = [arg.replace(":8080/", f":{health_server.port}/") for arg in indexer_test[1:]]
    assert retargeted != indexer_test[1:]
    code, output, _ = await _probe(runtime, retargeted, runtime.image_env())
    assert code == 0, output
    health_server.status = 503
    code, output, _ = await _probe(runtime, retargeted, runtime.image_env())
    assert code == 1, output


# --- the operator CLI ---------------------------------------------------------------------------------


def test_the_image_has_no_devnet_and_its_cli_says_so(runtime: Runtime) -> None:
    no_devnet = _run(runtime, [str(runtime.bin / "python"), "-c", "import devnet"], env={})
    assert no_devnet.returncode != 0 and "No module named 'devnet'" in no_devnet.stderr
    version = _run(runtime, [str(runtime.bin / "attestmesh"), "--version"], env=runtime.image_env())
    assert version.returncode == 0 and version.stdout.startswith("attestmesh 0."), version.stderr
    lab = _run(runtime, [str(runtime.bin / "attestmesh"), "devnet", "up"], env=runtime.image_env())
    assert lab.returncode == 2 and "the devnet is not installed" in lab.stderr
    assert "Traceback" not in lab.stderr


async def test_the_image_cli_reads_a_chain(runtime: Runtime, anvil: AnvilProcess, stack: Deployment) -> None:
    argv = [str(runtime.bin / "attestmesh"), "chain", "status", "--json", "--rpc-url", anvil.rpc_url]
    argv += ["--chain-id", str(CHAIN_ID), "--cluster", str(stack.cluster)]
    result = await asyncio.to_thread(_run, runtime, argv, runtime.image_env())
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["chain_id"] == CHAIN_ID and status["cluster"]["address"] == str(stack.cluster)
    assert status["members"] == []


async def test_the_image_cli_reads_a_nodes_health(runtime: Runtime, health_server: HealthServer) -> None:
    url = f"http://127.0.0.1:{health_server.port}/healthz"
    code, output, _ = await _probe(
        runtime, [str(runtime.bin / "attestmesh"), "health", url], runtime.image_env()
    )
    assert code == 0 and f"{url}: HEALTHY (HTTP 200)" in output, output
    health_server.status = 503
    code, output, _ = await _probe(
        runtime, [str(runtime.bin / "attestmesh"), "health", url], runtime.image_env()
    )
    assert code == 1 and f"{url}: UNHEALTHY (HTTP 503)" in output, output
