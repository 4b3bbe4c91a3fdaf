"""The measured trust anchors (``sidecar.core.measured``) and their start-up gate in the identity step.

The pure check gets an app compose (JSON text, as the guest agent's ``Info`` reports it) and an environment;
it must name every variable that is not a literal of the compose, is sealed, is missing or is overridden,
and turn garbage into problems, never exceptions. The identity step must refuse before deriving any key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from devnet.kms import DevnetKms, get_key
from sidecar.core.ids import ZERO32, Address, Bytes32
from sidecar.core.keys import KeyScope
from sidecar.core.measured import MEASURED, kms_root_problems, measured_literals, measured_problems
from sidecar.drivers.anchors import AnchorGate
from sidecar.drivers.steps import IdentityStep
from sidecar.dstack.agent import DerivedKey, NodeInfo

CLUSTER_A = "0x" + "aa" * 20
CLUSTER_B = "0x" + "bb" * 20
FACTORY = "0x" + "fa" * 20
ROOT_1, ROOT_2 = "0x" + "11" * 20, "0x" + "22" * 20
REGISTRY = "0x" + "ee" * 20
LITERALS = {
    "ATTESTMESH_CHAIN_ID": "31337",
    "ATTESTMESH_CLUSTER": CLUSTER_A,
    "ATTESTMESH_MEMBER_APP_FACTORY": FACTORY,
    "ATTESTMESH_KMS_ROOTS": f"{ROOT_1},{ROOT_2}",
    "ATTESTMESH_INDEXER_REGISTRY": REGISTRY,
}
SEALED = {"ATTESTMESH_RPC_URL": "${ATTESTMESH_RPC_URL}"}


def docker_compose(
    environment: Any, *, service: str = "sidecar", extra: Mapping[str, Any] | None = None
) -> str:
    services: dict[str, Any] = {
        service: {"image": "ghcr.io/attestmesh/attestmesh-sidecar:x", "environment": environment}
    }
    services.update(extra or {})
    return yaml.safe_dump({"services": services})


def as_list(values: Mapping[str, str | None]) -> list[str]:
    return [name if value is None else f"{name}={value}" for name, value in values.items()]


def app_compose(compose_text: Any, allowed_envs: Any = ("ATTESTMESH_RPC_URL",)) -> str:
    allowed = list(allowed_envs) if isinstance(allowed_envs, tuple) else allowed_envs
    document = {"name": "node", "runner": "docker-compose", "docker_compose_file": compose_text}
    document["allowed_envs"] = allowed
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def hashed(text: str) -> Bytes32:
    return Bytes32(hashlib.sha256(text.encode()).digest())


def check(text: str, env: Mapping[str, str]) -> list[str]:
    return measured_problems(text, hashed(text), env)


def good(**changes: str | None) -> str:
    values: dict[str, str | None] = {**LITERALS, **SEALED}
    for name, value in changes.items():
        if value == "<drop>":
            del values[f"ATTESTMESH_{name}"]
        else:
            values[f"ATTESTMESH_{name}"] = value
    return app_compose(docker_compose(as_list(values)))


ENV = {**LITERALS, "ATTESTMESH_RPC_URL": "https://rpc.example/secret-api-key"}


# --- accepted ------------------------------------------------------------------------------------------


def test_literals_that_the_environment_agrees_with_pass() -> None:
    assert check(good(), ENV) == []


def test_the_mapping_spelling_and_an_integer_chain_id_pass() -> None:
    mapping: dict[str, Any] = {**LITERALS, "ATTESTMESH_CHAIN_ID": 31337, **SEALED}
    assert check(app_compose(docker_compose(mapping)), ENV) == []


def test_values_are_compared_as_values() -> None:
    env = {
        **ENV,
        "ATTESTMESH_CLUSTER": "0x" + "AA" * 20,  # another case
        "ATTESTMESH_KMS_ROOTS": f"{ROOT_2} , {ROOT_1}",  # another order, spaces
        "ATTESTMESH_CHAIN_ID": " 31337 ",
    }
    assert check(good(CLUSTER="Aa" * 20), env) == []  # no 0x in the compose


def test_no_registry_in_the_compose_and_none_in_the_environment_pass() -> None:
    env = {k: v for k, v in ENV.items() if k != "ATTESTMESH_INDEXER_REGISTRY"}
    assert check(good(INDEXER_REGISTRY="<drop>"), env) == []
    assert check(good(INDEXER_REGISTRY=""), {**env, "ATTESTMESH_INDEXER_REGISTRY": " "}) == []


def test_the_sidecar_service_is_found_among_other_services() -> None:
    app = {"app": {"image": "curl", "environment": ["APP_MODE=1"]}}
    text = app_compose(docker_compose(as_list({**LITERALS, **SEALED}), extra=app))
    assert check(text, ENV) == []
    # a service named otherwise is found too when it is the only one naming anchors
    text = app_compose(docker_compose(as_list({**LITERALS, **SEALED}), service="node", extra=app))
    assert check(text, ENV) == []


# --- refused: one line per problem, naming the variable ----------------------------------------------


def test_the_repointed_cluster_is_named_with_both_values() -> None:
    problems = check(good(), {**ENV, "ATTESTMESH_CLUSTER": CLUSTER_B})
    assert problems == [
        f"ATTESTMESH_CLUSTER={CLUSTER_B} overrides the measured value {CLUSTER_A} in the compose"
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ATTESTMESH_CHAIN_ID", "1"),
        ("ATTESTMESH_MEMBER_APP_FACTORY", "0x" + "fb" * 20),
        ("ATTESTMESH_KMS_ROOTS", ROOT_1),  # a subset is another set
        ("ATTESTMESH_KMS_ROOTS", f"{ROOT_1},{ROOT_2},0x{'33' * 20}"),  # and so is a superset
        ("ATTESTMESH_INDEXER_REGISTRY", "0x" + "ef" * 20),
    ],
)
def test_every_overridden_anchor_is_named(name: str, value: str) -> None:
    (problem,) = check(good(), {**ENV, name: value})
    assert problem.startswith(f"{name}={value} overrides the measured value"), problem


def test_a_sealed_reference_or_a_passed_through_name_is_not_a_literal() -> None:
    problems = check(good(CLUSTER="${ATTESTMESH_CLUSTER}", CHAIN_ID=None, KMS_ROOTS="$ROOTS"), ENV)
    assert [p.split(" ")[0] for p in problems] == [
        "ATTESTMESH_CHAIN_ID",
        "ATTESTMESH_CLUSTER",
        "ATTESTMESH_KMS_ROOTS",
    ]
    assert all("is not a literal in the compose" for p in problems)
    assert "passed through from the host" in problems[0]
    assert "'${ATTESTMESH_CLUSTER}'" in problems[1]


def test_the_mapping_spelling_with_a_reference_is_refused_too() -> None:
    mapping: dict[str, Any] = {**LITERALS, "ATTESTMESH_CLUSTER": "${ATTESTMESH_CLUSTER}", **SEALED}
    (problem,) = check(app_compose(docker_compose(mapping)), ENV)
    assert problem.startswith("ATTESTMESH_CLUSTER is not a literal in the compose")


def test_an_anchor_in_allowed_envs_is_named() -> None:
    text = app_compose(
        docker_compose(as_list({**LITERALS, **SEALED})), ("ATTESTMESH_RPC_URL", "ATTESTMESH_CLUSTER")
    )
    (problem,) = check(text, ENV)
    assert problem.startswith("ATTESTMESH_CLUSTER is in the app compose's allowed_envs")


def test_missing_anchors_are_named_in_the_compose_and_in_the_environment() -> None:
    problems = check(
        good(MEMBER_APP_FACTORY="<drop>", KMS_ROOTS=""), {k: v for k, v in ENV.items() if "CHAIN_ID" not in k}
    )
    assert problems == [
        "ATTESTMESH_CHAIN_ID is not set, but the compose measures 31337",
        "ATTESTMESH_MEMBER_APP_FACTORY is not defined in the compose: a trust anchor must be a literal value "
        "there",
        "ATTESTMESH_KMS_ROOTS is empty in the compose: a trust anchor must be a literal value there",
    ]


def test_a_registry_the_compose_does_not_measure_is_named() -> None:
    (problem,) = check(good(INDEXER_REGISTRY="<drop>"), ENV)
    assert (
        problem
        == f"ATTESTMESH_INDEXER_REGISTRY={REGISTRY} is not measured: the compose names no indexer registry"
    )
    (problem,) = check(good(), {k: v for k, v in ENV.items() if "REGISTRY" not in k})
    assert problem == f"ATTESTMESH_INDEXER_REGISTRY is not set, but the compose measures {REGISTRY}"


def test_a_malformed_literal_or_value_is_named() -> None:
    problems = check(
        good(CHAIN_ID="thirty", CLUSTER="0x1234"), {**ENV, "ATTESTMESH_MEMBER_APP_FACTORY": "nope"}
    )
    assert problems == [
        "ATTESTMESH_CHAIN_ID='thirty' in the compose is not a chain id in decimal digits",
        "ATTESTMESH_CLUSTER='0x1234' in the compose is not a 20-byte hex address",
        "ATTESTMESH_MEMBER_APP_FACTORY='nope' is not a 20-byte hex address",
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = app_compose(
        docker_compose(as_list({**LITERALS, "ATTESTMESH_CLUSTER": "${ATTESTMESH_CLUSTER}", **SEALED})),
        ("ATTESTMESH_RPC_URL", "ATTESTMESH_CLUSTER"),
    )
    problems = check(text, {**ENV, "ATTESTMESH_CHAIN_ID": "1", "ATTESTMESH_KMS_ROOTS": ROOT_1})
    assert [p.split(" ")[0].split("=")[0] for p in problems] == [
        "ATTESTMESH_CLUSTER",  # in allowed_envs
        "ATTESTMESH_CHAIN_ID",
        "ATTESTMESH_CLUSTER",  # not a literal
        "ATTESTMESH_KMS_ROOTS",
    ]


def test_a_compose_that_does_not_hash_to_the_compose_hash_is_not_trusted() -> None:
    text = good()
    (problem,) = measured_problems(text, hashed(text + " "), {**ENV, "ATTESTMESH_CLUSTER": CLUSTER_B})
    assert "does not hash" not in problem and "not to the compose hash" in problem
    assert measured_problems(text, ZERO32, ENV)[0].startswith(
        "the app compose the guest agent reports hashes"
    )


def test_secrets_of_the_environment_are_never_echoed() -> None:
    problems = check(good(CLUSTER="${ATTESTMESH_CLUSTER}"), {**ENV, "ATTESTMESH_CLUSTER": CLUSTER_B})
    assert problems and not any("secret-api-key" in p for p in problems)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json", "the app compose is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        ('{"docker_compose_file": 3}', "has no docker_compose_file"),
        ('{"runner": "bash"}', "has no docker_compose_file"),
        (app_compose("services: [unclosed"), "not valid YAML"),
        (app_compose("- a list"), "has no services mapping"),
        (app_compose("services:\n  sidecar: 3\n"), "the compose service 'sidecar' is not a mapping"),
        (app_compose("services:\n  sidecar:\n    environment: 3\n"), "neither a list nor a mapping"),
        (app_compose("services:\n  sidecar:\n    environment: [[1]]\n"), "not a string"),
        (
            app_compose("services:\n  app:\n    image: x\n"),
            "no service of the compose defines a measured variable",
        ),
        (app_compose(docker_compose(as_list(LITERALS)), "ATTESTMESH_CLUSTER"), "allowed_envs is not a list"),
    ],
)
def test_garbage_is_a_problem_not_a_crash(text: str, fragment: str) -> None:
    problems = check(text, ENV)
    assert any(fragment in p for p in problems), problems


def test_several_services_naming_anchors_without_a_sidecar_service_is_a_problem() -> None:
    text = app_compose(
        docker_compose(as_list(LITERALS), service="one", extra={"two": {"environment": as_list(LITERALS)}})
    )
    (problem,) = check(text, ENV)
    assert "several compose services (one, two)" in problem


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.builds(app_compose, st.text(max_size=300)),
        st.builds(
            lambda env: app_compose(yaml.safe_dump({"services": {"sidecar": {"environment": env}}})),
            st.one_of(
                st.lists(st.text(max_size=40), max_size=8),
                st.dictionaries(
                    st.sampled_from(MEASURED), st.one_of(st.none(), st.integers(), st.text(max_size=30))
                ),
            ),
        ),
    ),
    st.dictionaries(st.sampled_from(MEASURED), st.text(max_size=50)),
)
def test_any_input_gives_a_list_of_problems(text: str, env: dict[str, str]) -> None:
    problems = check(text, env)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    measured_literals(text)  # never raises either


def test_measured_literals_reads_the_sidecars_literals() -> None:
    text = docker_compose(as_list({**LITERALS, **SEALED}))
    assert measured_literals(text) == LITERALS
    assert measured_literals("services: 3") == "docker_compose_file has no services mapping"


def test_the_nodes_own_kms_root_must_be_trusted() -> None:
    roots = (Address.from_hex(ROOT_1), Address.from_hex(ROOT_2))
    assert kms_root_problems(roots[1], roots) == []
    (problem,) = kms_root_problems(Address.from_hex("0x" + "33" * 20), roots)
    assert problem.startswith("ATTESTMESH_KMS_ROOTS does not name the KMS root 0x3333")


# --- the identity step: refuse before any key is derived -------------------------------------------------


class RecordingAgent:
    """The guest agent for the identity step: ``Info`` with ``compose``; GetKey from the devnet KMS,
    every path recorded."""

    def __init__(self, compose: str) -> None:
        self.kms = DevnetKms()
        self.compose = compose
        self.paths: list[str] = []
        self.app_id = Address(b"\x5b" * 20)

    async def info(self) -> NodeInfo:
        return NodeInfo(
            app_id=self.app_id, instance_id=b"\x01" * 20, compose_hash=hashed(self.compose),
            app_compose=self.compose, app_name="node", device_id=ZERO32, mr_aggregated=ZERO32,
            os_image_hash=ZERO32, key_provider="kms", tcb_info={},
        )  # fmt: skip

    async def get_key(self, path: str, purpose: str = "", algorithm: str = "secp256k1") -> DerivedKey:
        self.paths.append(path)
        return DerivedKey(*get_key(self.kms, self.app_id, path, purpose, algorithm))


SCOPE = KeyScope(31337, Address.from_hex(CLUSTER_A))


async def test_the_identity_step_refuses_a_repointed_cluster_before_deriving_any_key() -> None:
    agent, refused = RecordingAgent(good()), []
    gate = AnchorGate({**ENV, "ATTESTMESH_CLUSTER": CLUSTER_B}, (DevnetKms().root_address,), refused.append)
    outcome, ident = await IdentityStep(agent, SCOPE, gate).run(None)
    assert ident is None and outcome.failure == "terminal" and agent.paths == []
    assert refused == [
        [f"ATTESTMESH_CLUSTER={CLUSTER_B} overrides the measured value {CLUSTER_A} in the compose"]
    ]
    assert "ATTESTMESH_CLUSTER" in outcome.facts["agent_error"]


async def test_the_identity_step_refuses_keys_from_an_untrusted_kms_root() -> None:
    agent, refused = RecordingAgent(good()), []
    gate = AnchorGate(ENV, (Address.from_hex(ROOT_1),), refused.append)
    outcome, ident = await IdentityStep(agent, SCOPE, gate).run(None)
    assert ident is None and outcome.failure == "terminal"
    (problems,) = refused
    assert problems[0].startswith(
        f"ATTESTMESH_KMS_ROOTS does not name the KMS root {DevnetKms().root_address}"
    )


async def test_the_identity_step_derives_cluster_bound_keys_when_everything_is_measured() -> None:
    agent, refused = RecordingAgent(good()), []
    gate = AnchorGate(ENV, (DevnetKms().root_address,), refused.append)
    outcome, ident = await IdentityStep(agent, SCOPE, gate).run(None)
    assert ident is not None and outcome.failure is None and refused == []
    assert ident.scope == SCOPE
    assert agent.paths == [
        f"attestmesh/{key}/v1/31337/{CLUSTER_A}"
        for key in ("signer", "identity", "seal", "wireguard", "state")
    ]
