"""The rules behind ``deploy/indexer.sh`` and its devnet verbs, without I/O: what a sealed env file may change
about the lab's indexer (``devnet.sealedenv``), and what ``indexer verify`` names as a mismatch between the
registry record and the indexer's ``/status`` (``ops.indexers.registration_problems``)."""

from __future__ import annotations

import pytest

from devnet.sealedenv import EnvFileError, parse_env_file, plan_indexer_env
from ops.indexers import IndexerIdentity, registration_problems
from sidecar.core.ids import Bytes32
from sidecar.core.model import IndexerRecord

P = "ATTESTMESH_INDEXER_"
LAB_ENV = {
    f"{P}RPC_URL": "http://10.213.0.2:8545",
    f"{P}CHAIN_ID": "31337",
    f"{P}CLUSTER_FACTORY": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    f"{P}START_BLOCK": "1",
    f"{P}REGISTRY": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
    f"{P}PUBLIC_URL": "ws://10.213.0.5:8080/v1/subscribe",
    f"{P}CODE_ID": "0x" + "93" * 20 + "00" * 12,
    f"{P}KEY_VERSION": "4",
    f"{P}LISTEN_ADDR": "0.0.0.0:8080",
    f"{P}POLL_INTERVAL": "0.5",
    f"{P}CONFIRMATIONS": "0",
    "DSTACK_SIMULATOR_ENDPOINT": "/tmp/lab/indexer/dstack.sock",
    "PATH": "/usr/bin",
}
ENDPOINT = "wss://indexer.example/v1/subscribe"
CODE_ID = Bytes32(b"\x1d" * 32)
KEY1, KEY2 = Bytes32(b"\x71" * 32), Bytes32(b"\x72" * 32)


# --- the env file -------------------------------------------------------------------------------------------


def test_env_file_lines_comments_export_and_quotes() -> None:
    text = (
        "# the indexer's sealed env\n\n"
        f"{P}KEY_VERSION=2\n"
        f"export {P}LOG_LEVEL = 'debug'\n"
        f'{P}PUBLIC_URL="ws://a/b=c"\n'
        f"{P}KEY_VERSION=3\n"  # a later line wins
        f"{P}CLUSTERS=\n"
    )
    assert parse_env_file(text) == {
        f"{P}KEY_VERSION": "3",
        f"{P}LOG_LEVEL": "debug",
        f"{P}PUBLIC_URL": "ws://a/b=c",
        f"{P}CLUSTERS": "",
    }


def test_env_file_malformed_lines_are_named_by_number_never_by_content() -> None:
    with pytest.raises(EnvFileError) as raised:
        parse_env_file("OK=1\nthis is no assignment\n1BAD=x\nsecret-value-here\n")
    assert str(raised.value) == "line 2 is not NAME=value; line 3 is not NAME=value; line 4 is not NAME=value"


# --- what it may change -----------------------------------------------------------------------------------


def test_key_version_and_tunables_are_applied_and_lab_values_may_repeat() -> None:
    values = {
        f"{P}KEY_VERSION": "2",
        f"{P}LOG_LEVEL": "debug",
        f"{P}MAX_LOG_RANGE": "500",
        f"{P}RPC_URL": LAB_ENV[f"{P}RPC_URL"],  # the lab's own value: accepted, not kept
        f"{P}CLUSTERS": "",  # blank: unset
    }
    plan = plan_indexer_env(values, LAB_ENV)
    assert plan.key_version == 2
    assert plan.values == {f"{P}LOG_LEVEL": "debug", f"{P}MAX_LOG_RANGE": "500"}


def test_the_file_is_the_whole_sealed_env_so_a_missing_key_version_is_1() -> None:
    assert plan_indexer_env({}, LAB_ENV).key_version == 1  # not the lab's current 4
    assert plan_indexer_env({f"{P}LOG_LEVEL": "info"}, LAB_ENV).values == {f"{P}LOG_LEVEL": "info"}


def test_every_problem_is_named_at_once_and_no_secret_is_echoed() -> None:
    values = {
        f"{P}PUBLIC_URL": "ws://elsewhere.example/v1/subscribe",
        f"{P}RPC_URL": "https://rpc.example/v2/api-key-value",
        "DSTACK_SIMULATOR_ENDPOINT": "/tmp/other.sock",
        f"{P}NO_SUCH_THING": "1",
        f"{P}KEY_VERSION": "0",
        f"{P}CONFIRMATIONS": "many",
    }
    with pytest.raises(EnvFileError) as raised:
        plan_indexer_env(values, LAB_ENV)
    message = str(raised.value)
    for name in ("PUBLIC_URL", "RPC_URL"):
        assert f"{P}{name} is set by the lab; the file gives another value" in message
    assert "DSTACK_SIMULATOR_ENDPOINT is not an indexer variable" in message
    assert f"{P}NO_SUCH_THING is not a known indexer variable" in message
    assert f"{P}KEY_VERSION" in message and f"{P}CONFIRMATIONS" in message  # the settings check
    for value in ("elsewhere", "api-key-value", "other.sock"):  # (the settings check shows only plain values)
        assert value not in message


# --- verify: what differs between the registry and the indexer ----------------------------------------------


def identity(key: Bytes32 = KEY1, *, version: int | None = 1, url: str | None = ENDPOINT) -> IndexerIdentity:
    return IndexerIdentity(public_key=key, code_id=CODE_ID, public_url=url, key_version=version)


def record(key: Bytes32 = KEY1, *, endpoint: str = ENDPOINT, code_id: Bytes32 = CODE_ID) -> IndexerRecord:
    return IndexerRecord(endpoint=endpoint, code_id=code_id, pub_key=key, updated_at=1)


def test_a_matching_record_has_no_problem() -> None:
    assert registration_problems(record(), identity()) == []
    # --endpoint / --code-id stand in for what /status says, as for `indexer register`
    other = "wss://lb.example/v1/subscribe"
    assert registration_problems(record(endpoint=other), identity(url=None), endpoint=other) == []


def test_each_mismatch_is_named_with_both_values() -> None:
    assert registration_problems(IndexerRecord("", CODE_ID, KEY1, 0), identity()) == [
        "the registry names no indexer"
    ]
    assert registration_problems(record(KEY1), identity(KEY2, version=2)) == [
        f"the registry names key {KEY1} but the indexer signs with {KEY2} (key v2)"
    ]
    problems = registration_problems(
        record(endpoint="ws://old/v1/subscribe", code_id=Bytes32(bytes(32))), identity()
    )
    assert problems == [
        f"the registry names endpoint ws://old/v1/subscribe but the indexer is {ENDPOINT}",
        f"the registry names code id {Bytes32(bytes(32))} but the indexer's is {CODE_ID}",
    ]
    assert registration_problems(record(), identity(url=None)) == [
        "the indexer's /status has no public_url (give the endpoint)"
    ]
