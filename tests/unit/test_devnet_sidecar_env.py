"""``ATTESTMESH_DEVNET_SIDECAR_ENV``: the extra environment a devnet command gives the sidecars it starts."""

from __future__ import annotations

import json

import pytest

from devnet.boot import extra_sidecar_env
from devnet.labdir import DevnetError

LAB = {"ATTESTMESH_RPC_URL": "http://10.9.0.2:8545", "ATTESTMESH_POLL_INTERVAL": "1.0", "PATH": "/bin"}


def test_nothing_set_changes_nothing() -> None:
    assert extra_sidecar_env(LAB, "") == LAB
    assert extra_sidecar_env(LAB, "  ") == LAB


def test_rpc_urls_replace_the_labs_rpc_url_and_null_removes_a_name() -> None:
    extra = {"ATTESTMESH_RPC_URLS": "http://a/,http://b/", "ATTESTMESH_RPC_QUORUM": "2",
             "ATTESTMESH_POLL_INTERVAL": None}  # fmt: skip
    env = extra_sidecar_env(LAB, json.dumps(extra))
    assert env == {"ATTESTMESH_RPC_URLS": "http://a/,http://b/", "ATTESTMESH_RPC_QUORUM": "2", "PATH": "/bin"}
    assert LAB["ATTESTMESH_RPC_URL"] == "http://10.9.0.2:8545"  # the lab's own mapping is not touched


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("{nope", "is not JSON"),
        ('["ATTESTMESH_X"]', "must be a JSON object"),
        (
            '{"PATH": "/tmp", "ATTESTMESH_Q": 2}',
            "'PATH': not an ATTESTMESH_* name; 'ATTESTMESH_Q': not a string",
        ),
    ],
)
def test_a_bad_value_is_refused_naming_every_problem(extra: str, message: str) -> None:
    with pytest.raises(DevnetError, match="ATTESTMESH_DEVNET_SIDECAR_ENV") as refused:
        extra_sidecar_env(LAB, extra)
    assert message in str(refused.value)
