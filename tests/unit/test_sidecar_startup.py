"""The sidecar's start-up path loads neither web3 nor eth_account (issue 13 item 2): importing the daemon
and building the read-only chain clients a registered node uses leaves both out of ``sys.modules``;
eth_account loads when the first transaction signer is built. Each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

NEVER_ON_START = ("web3", "eth_account")


def modules_after(body: str) -> list[str]:
    """Run ``body`` in a fresh interpreter; the modules of ``NEVER_ON_START`` it loaded."""
    script = textwrap.dedent(body) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps([m for m in {NEVER_ON_START!r} if m in sys.modules]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


READ_ONLY_CLIENTS = """
    from sidecar.chain.contracts import ClusterClient, IndexerRegistryClient, MemberAppFactoryClient
    from sidecar.chain.jsonrpc import JsonRpcClient
    from sidecar.chain.rpc import ChainConnection
    from sidecar.core.ids import Address

    conn = ChainConnection(JsonRpcClient("http://127.0.0.1:9", timeout=1.0), "http://127.0.0.1:9", 1.0)
    for client in (ClusterClient, IndexerRegistryClient, MemberAppFactoryClient):
        client(conn, Address(b"\\x01" * 20)).encode_call(
            *{"ClusterClient": ("memberCount",), "IndexerRegistryClient": ("current",),
              "MemberAppFactoryClient": ("isOurApp", Address(b"\\x02" * 20).checksum)}[client.__name__]
        )
"""


@pytest.mark.parametrize(
    "body",
    [
        "import sidecar.daemon",
        "import sidecar.__main__",
        "import indexer.service",
        "import sidecar.daemon\n" + textwrap.dedent(READ_ONLY_CLIENTS),
    ],
    ids=["daemon", "entrypoint", "indexer", "read-only-clients"],
)
def test_the_start_up_path_loads_neither_web3_nor_eth_account(body: str) -> None:
    assert modules_after(body) == []


def test_building_a_signer_loads_eth_account_and_still_not_web3() -> None:
    # The positive control: the check above would see eth_account if the start-up path built a signer.
    body = """
        import sidecar.daemon
        from sidecar.chain.tx import LocalSigner
        from sidecar.core.ids import SecretBytes
        LocalSigner(SecretBytes(b"\\x01" * 32))
    """
    assert modules_after(body) == ["eth_account"]
