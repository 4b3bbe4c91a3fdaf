"""``attestmesh chain allow-compose``, ``chain disallow-compose`` and ``chain fund`` as the deploy routines
run them: the CLI as a
subprocess against anvil with our contracts, keys only in the environment. Each action is idempotent (the
second run sends nothing: the nonce does not move), refuses bad input with exit 2, fails with exit 1 and
one line on stderr, and never shows a key or the RPC URL's credentials.

Everything runs on 127.0.0.1 against the module's anvil; nothing else is contacted.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from devnet.anvil import DEVNET_DEPLOYER_KEY, DEVNET_DEV_KEYS, AnvilProcess
from devnet.deployment import Deployment
from sidecar.chain.contracts import ClusterClient, MemberAppFactoryClient
from sidecar.chain.deploy import deploy_contract
from sidecar.chain.rpc import ChainConnection, checksum
from sidecar.chain.tx import LocalSigner, TxSubmitter
from sidecar.core.ids import Address, Bytes32, SecretBytes
from tests.component.conftest import CHAIN_ID, COMPOSE_HASH
from tests.component.toolkit import bad_checksum, chain_args, closed_port, run_cli, usage_error

pytestmark = [pytest.mark.component, pytest.mark.timeout(120)]

ETH = 10**18
OWNER_KEY = "0x" + DEVNET_DEPLOYER_KEY.reveal().hex()
OTHER_KEY = "0x" + DEVNET_DEV_KEYS[0].reveal().hex()  # a funded account that owns nothing
OWNER = LocalSigner(DEVNET_DEPLOYER_KEY).address
OTHER = LocalSigner(DEVNET_DEV_KEYS[0]).address
SECRETS = (DEVNET_DEPLOYER_KEY.reveal().hex(), DEVNET_DEV_KEYS[0].reveal().hex())


async def nonce(conn: ChainConnection, account: Address) -> int:
    return int(await conn.w3.eth.get_transaction_count(checksum(account)))


def assert_no_key(*outputs: str) -> None:
    for output in outputs:
        for secret in SECRETS:
            assert secret not in output.lower()


def fresh_account() -> Address:
    return LocalSigner(SecretBytes(os.urandom(32))).address


# --- allow-compose -----------------------------------------------------------------------------------------


async def test_allow_compose_sends_add_compose_hash_once(
    anvil: AnvilProcess, conn: ChainConnection, stack: Deployment
) -> None:
    cluster = ClusterClient(conn, stack.cluster)
    new = Bytes32(os.urandom(32))
    assert not await cluster.allowed_compose_hash(new)
    args = ("chain", "allow-compose", *chain_args(anvil, stack), "--compose-hash", str(new))

    first = await run_cli(*args, env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert first.returncode == 0, first.stderr
    assert f"compose hash {new} on cluster {stack.cluster}: allowlisted (tx 0x" in first.stdout
    assert await cluster.allowed_compose_hash(new)

    sent = await nonce(conn, OWNER)
    # Again, from the sidecar's variables and without 0x: nothing is sent, and it says so.
    env = {
        "ATTESTMESH_OWNER_KEY": OWNER_KEY,
        "ATTESTMESH_RPC_URL": anvil.rpc_url,
        "ATTESTMESH_CHAIN_ID": str(CHAIN_ID),
        "ATTESTMESH_CLUSTER": str(stack.cluster),
    }
    again, initial = await asyncio.gather(
        run_cli("chain", "allow-compose", "--compose-hash", new.hex, env=env),
        run_cli("chain", "allow-compose", "--compose-hash", str(COMPOSE_HASH), env=env),
    )
    assert again.returncode == 0, again.stderr
    assert (
        again.stdout
        == f"compose hash {new} on cluster {stack.cluster}: already allowlisted; nothing changed\n"
    )
    assert initial.returncode == 0, initial.stderr
    assert "already allowlisted; nothing changed" in initial.stdout
    assert await nonce(conn, OWNER) == sent
    assert_no_key(first.stdout, first.stderr, again.stdout, again.stderr, initial.stdout, initial.stderr)


async def test_disallow_compose_sends_remove_compose_hash_once_and_only_as_the_owner(
    anvil: AnvilProcess, conn: ChainConnection, stack: Deployment
) -> None:
    cluster = ClusterClient(conn, stack.cluster)
    old = Bytes32(os.urandom(32))
    args = ("chain", "disallow-compose", *chain_args(anvil, stack), "--compose-hash", str(old))
    # Not allowlisted: nothing to send, and it says so (no owner check needed to send nothing).
    absent = await run_cli(*args, env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert absent.returncode == 0, absent.stderr
    where = f"compose hash {old} on cluster {stack.cluster}"
    assert absent.stdout == f"{where}: not allowlisted; nothing changed\n"
    allowed = await run_cli(
        "chain", "allow-compose", *chain_args(anvil, stack), "--compose-hash", str(old),
        env={"ATTESTMESH_OWNER_KEY": OWNER_KEY},
    )  # fmt: skip
    assert allowed.returncode == 0 and await cluster.allowed_compose_hash(old)

    # A key that does not own the cluster: refused before anything is sent; the hash stays.
    other_nonce = await nonce(conn, OTHER)
    refused = await run_cli(*args, env={"ATTESTMESH_OWNER_KEY": OTHER_KEY})
    assert refused.returncode == 1
    assert f"{OTHER} is not the owner of cluster {stack.cluster}" in refused.stderr
    assert await nonce(conn, OTHER) == other_nonce and await cluster.allowed_compose_hash(old)

    sent = await nonce(conn, OWNER)
    first = await run_cli(*args, env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert first.returncode == 0, first.stderr
    assert f"{where}: removed from the allowlist (tx 0x" in first.stdout
    assert not await cluster.allowed_compose_hash(old)
    assert await nonce(conn, OWNER) == sent + 1
    again = await run_cli(*args, env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert again.returncode == 0 and "not allowlisted; nothing changed" in again.stdout
    machine = await run_cli(*args, "--json", env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert machine.returncode == 0, machine.stderr
    assert json.loads(machine.stdout) == {
        "cluster": str(stack.cluster), "compose_hash": str(old), "changed": False, "tx": None,
    }  # fmt: skip
    assert await nonce(conn, OWNER) == sent + 1
    assert await cluster.allowed_compose_hash(COMPOSE_HASH)  # the cluster's other hashes are untouched
    assert_no_key(*(p.stdout + p.stderr for p in (absent, refused, first, again, machine)))


async def test_allow_compose_refuses_without_the_owner_key_or_with_bad_input(
    anvil: AnvilProcess, conn: ChainConnection, stack: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = ClusterClient(conn, stack.cluster)
    new = Bytes32(os.urandom(32))
    base = ("chain", "allow-compose", "--rpc-url", anvil.rpc_url, "--chain-id", str(CHAIN_ID))
    args = (*base, "--cluster", str(stack.cluster), "--compose-hash", str(new))
    api_key = "k3y0f7h3pr0v1d3r"
    down_url = f"http://user:secret@127.0.0.1:{closed_port()}/v2/{api_key}?token=t0k3nv4lu3"
    owner_nonce, other_nonce = await nonce(conn, OWNER), await nonce(conn, OTHER)

    no_key, not_owner, bad_key, no_contract, down = await asyncio.gather(
        run_cli(*args),
        run_cli(*args, env={"ATTESTMESH_OWNER_KEY": OTHER_KEY}),
        run_cli(*args, env={"ATTESTMESH_OWNER_KEY": "0x" + "zz" * 32}),
        run_cli(
            *base, "--cluster", "0x" + "00" * 19 + "42", "--compose-hash", str(new),
            env={"ATTESTMESH_OWNER_KEY": OWNER_KEY},
        ),
        run_cli(
            "chain", "allow-compose", "--rpc-url", down_url, "--chain-id", str(CHAIN_ID),
            "--cluster", str(stack.cluster), "--compose-hash", str(new), "--timeout", "2",
            env={"ATTESTMESH_OWNER_KEY": OWNER_KEY},
        ),
    )  # fmt: skip
    assert no_key.returncode == 1 and "ATTESTMESH_OWNER_KEY is not set" in no_key.stderr
    assert not_owner.returncode == 1
    assert f"{OTHER} is not the owner of cluster {stack.cluster} (the owner is {OWNER})" in not_owner.stderr
    assert bad_key.returncode == 1 and "not hex" in bad_key.stderr and "zz" not in bad_key.stderr
    assert no_contract.returncode == 1 and "no contract at the cluster address" in no_contract.stderr
    assert down.returncode == 1 and "chain allow-compose at http://127.0.0.1:" in down.stderr
    for secret in ("secret", "user:", api_key, "t0k3nv4lu3"):
        assert secret not in down.stderr
    for failed in (no_key, not_owner, bad_key, no_contract, down):
        assert failed.stdout == "" and len(failed.stderr.splitlines()) == 1, failed.stderr
        assert "Traceback" not in failed.stderr
    assert_no_key(*(f.stderr for f in (no_key, not_owner, bad_key, no_contract, down)))
    assert not await cluster.allowed_compose_hash(new)
    assert (await nonce(conn, OWNER), await nonce(conn, OTHER)) == (owner_nonce, other_nonce)

    usage = await run_cli(*base, "--cluster", str(stack.cluster), "--compose-hash", "0xabc")
    assert usage.returncode == 2 and "0xabc" in usage.stderr  # one as a process: the exit status itself
    for bad in (
        (*base, "--cluster", str(stack.cluster)),  # no compose hash
        (*base, "--cluster", str(stack.cluster), "--compose-hash", "0x" + "zz" * 32),
        (*base, "--cluster", bad_checksum(str(stack.cluster)), "--compose-hash", str(new)),
        (*base, "--cluster", "0x" + "00" * 20, "--compose-hash", str(new)),
        (*base, "--compose-hash", str(new)),  # no cluster
        ("chain", "allow-compose", "--rpc-url", anvil.rpc_url, "--chain-id", "0", "--cluster",
         str(stack.cluster), "--compose-hash", str(new)),
    ):  # fmt: skip
        assert usage_error(capsys, bad), bad


# --- fund --------------------------------------------------------------------------------------------------


async def test_fund_sends_only_below_the_minimum_and_says_from_which_key(
    anvil: AnvilProcess, conn: ChainConnection
) -> None:
    account = fresh_account()
    base = ("chain", "fund", "--rpc-url", anvil.rpc_url, "--chain-id", str(CHAIN_ID), "--to", str(account))

    first = await run_cli(
        *base, "--min-balance", "1", "--amount", "2.5", env={"ATTESTMESH_OWNER_KEY": OWNER_KEY}
    )
    assert first.returncode == 0, first.stderr
    assert f"funded {account} with 2.5 ETH from {OWNER} (ATTESTMESH_OWNER_KEY) (tx 0x" in first.stdout
    assert "balance 0 -> 2.5 ETH" in first.stdout
    assert await conn.get_balance(account) == 25 * ETH // 10

    owner_nonce = await nonce(conn, OWNER)
    env = {
        "ATTESTMESH_OWNER_KEY": OWNER_KEY,
        "ATTESTMESH_RPC_URL": anvil.rpc_url,
        "ATTESTMESH_CHAIN_ID": "31337",
    }
    again = await run_cli(
        "chain", "fund", "--to", str(account), "--min-balance", "1", "--amount", "2.5", env=env
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{account} has 2.5 ETH (at least 1); nothing sent\n"
    assert await nonce(conn, OWNER) == owner_nonce
    assert await conn.get_balance(account) == 25 * ETH // 10

    # A separate funding key wins over the owner key; a top-up that stays short says so.
    other_nonce = await nonce(conn, OTHER)
    funder_env = {"ATTESTMESH_OWNER_KEY": OWNER_KEY, "ATTESTMESH_FUNDER_KEY": OTHER_KEY}
    topped = await run_cli(*base, "--min-balance", "10", "--amount", "0.000000000000000001", env=funder_env)
    assert topped.returncode == 0, topped.stderr
    assert f"with 0.000000000000000001 ETH from {OTHER} (ATTESTMESH_FUNDER_KEY)" in topped.stdout
    assert "balance 2.5 -> 2.500000000000000001 ETH (still below 10)" in topped.stdout
    assert await conn.get_balance(account) == 25 * ETH // 10 + 1
    assert (await nonce(conn, OWNER), await nonce(conn, OTHER)) == (owner_nonce, other_nonce + 1)
    assert_no_key(*(p.stdout + p.stderr for p in (first, again, topped)))


async def test_fund_refuses_without_a_key_or_with_bad_input(
    anvil: AnvilProcess, conn: ChainConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    account = fresh_account()
    base = ("chain", "fund", "--rpc-url", anvil.rpc_url, "--chain-id", str(CHAIN_ID), "--to", str(account))
    amounts = ("--min-balance", "1", "--amount", "1")
    broke_key = "0x" + os.urandom(32).hex()  # an account with nothing to send
    no_key, broke, wrong_chain = await asyncio.gather(
        run_cli(*base, *amounts),
        run_cli(*base, *amounts, env={"ATTESTMESH_FUNDER_KEY": broke_key}),
        run_cli(
            "chain", "fund", "--rpc-url", anvil.rpc_url, "--chain-id", "1", "--to", str(account), *amounts,
            env={"ATTESTMESH_OWNER_KEY": OWNER_KEY},
        ),
    )  # fmt: skip
    assert no_key.returncode == 1 and "ATTESTMESH_OWNER_KEY is not set" in no_key.stderr
    assert broke.returncode == 1 and "has 0 wei" in broke.stderr and broke_key[2:] not in broke.stderr.lower()
    assert wrong_chain.returncode == 1 and "chain id mismatch" in wrong_chain.stderr
    for failed in (no_key, broke, wrong_chain):
        assert failed.stdout == "" and len(failed.stderr.splitlines()) == 1, failed.stderr
    assert_no_key(wrong_chain.stderr)
    assert await conn.get_balance(account) == 0

    usage = await run_cli(*base, "--min-balance", "1", "--amount", "lots")
    assert usage.returncode == 2 and "'lots' is not a decimal amount of ETH" in usage.stderr
    for bad, why in (
        ((*base, "--min-balance", "1", "--amount", "0"), "more than 0"),
        ((*base, "--min-balance", "-1", "--amount", "1"), "0 or more"),
        ((*base, "--min-balance", "nan", "--amount", "1"), "finite"),
        ((*base, "--min-balance", "1", "--amount", "0.0000000000000000001"), "more than 18 decimals"),
        ((*base, "--min-balance", "1"), "--amount"),
        (("chain", "fund", "--rpc-url", anvil.rpc_url, "--chain-id", "1", "--to", "0x" + "00" * 20, *amounts),
         "zero address"),
        (("chain", "fund", "--rpc-url", anvil.rpc_url, "--chain-id", "1", "--to", bad_checksum(str(account)),
          *amounts), "is not an address"),
        (("chain", "fund", "--rpc-url", anvil.rpc_url, "--to", str(account), *amounts), "--chain-id"),
    ):  # fmt: skip
        assert why in usage_error(capsys, bad), bad


# --- member-app --------------------------------------------------------------------------------------------


async def test_member_app_deploys_and_approves_once_and_refuses_a_key_that_is_not_the_owner(
    anvil: AnvilProcess, conn: ChainConnection, stack: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = ClusterClient(conn, stack.cluster)
    factory = MemberAppFactoryClient(conn, stack.member_app_factory)
    name = f"node-{os.urandom(3).hex()}"
    app = await factory.predict(stack.cluster, name)
    args = ("chain", "member-app", *chain_args(anvil, stack), "--factory", str(stack.member_app_factory))

    # A key that is not the owner's: the app may be deployed (the factory is open), the approval is refused.
    other_nonce = await nonce(conn, OTHER)
    refused = await run_cli(*args, "--name", name, env={"ATTESTMESH_OWNER_KEY": OTHER_KEY})
    assert refused.returncode == 1
    assert f"{OTHER} is not the owner of cluster {stack.cluster}" in refused.stderr
    assert not await cluster.allowed_app_id(app)
    assert await nonce(conn, OTHER) == other_nonce + 1  # the open factory's deploy, nothing more

    sent = await nonce(conn, OWNER)
    first = await run_cli(*args, "--name", name, env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"node {name}: app {app} already deployed; app id approved (tx 0x")
    assert await cluster.allowed_app_id(app) and await factory.is_our_app(app)
    assert await nonce(conn, OWNER) == sent + 1

    # Again, the factory from the environment, for a shell's eval: nothing sent.
    env = {"ATTESTMESH_OWNER_KEY": OWNER_KEY, "ATTESTMESH_MEMBER_APP_FACTORY": str(stack.member_app_factory)}
    again = await run_cli(
        "chain", "member-app", *chain_args(anvil, stack), "--name", name, "--shell", env=env
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"MEMBER_APP_ID={app}\n"
    fresh = f"node-{os.urandom(3).hex()}"
    both = await run_cli(*args, "--name", fresh, env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert both.returncode == 0, both.stderr
    assert "deployed (tx 0x" in both.stdout and "app id approved (tx 0x" in both.stdout
    again = await run_cli(*args, "--name", fresh, env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert again.stdout.endswith("already deployed; app id already approved; nothing changed\n")
    assert await nonce(conn, OWNER) == sent + 3
    assert_no_key(refused.stdout, refused.stderr, first.stdout, first.stderr, both.stdout, again.stdout)

    assert "node name must be" in usage_error(capsys, [*args, "--name", "Bad_Name"])


async def test_member_app_refuses_a_factory_other_than_the_clusters(
    anvil: AnvilProcess, conn: ChainConnection, stack: Deployment, deployer: TxSubmitter
) -> None:
    other, _ = await deploy_contract(conn, deployer, "ClusterMemberAppFactory")
    sent = await nonce(conn, OWNER)
    name = f"node-{os.urandom(3).hex()}"
    args = ("chain", "member-app", *chain_args(anvil, stack), "--factory", str(other), "--name", name)
    refused = await run_cli(*args, env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert refused.returncode == 1
    assert (
        f"cluster {stack.cluster} approves only member apps of factory {stack.member_app_factory}, "
        f"not of {other}"
    ) in refused.stderr
    assert await nonce(conn, OWNER) == sent  # nothing deployed, nothing approved
    assert not await MemberAppFactoryClient(conn, other).is_our_app(
        await MemberAppFactoryClient(conn, other).predict(stack.cluster, name)
    )


# --- rotate-csk --------------------------------------------------------------------------------------------


async def test_rotate_csk_starts_the_next_epoch_and_sets_rotate_on_remove_once(
    anvil: AnvilProcess, conn: ChainConnection, stack: Deployment
) -> None:
    cluster = ClusterClient(conn, stack.cluster)
    epoch = await cluster.csk_epoch()
    args = ("chain", "rotate-csk", *chain_args(anvil, stack))

    refused = await run_cli(*args, env={"ATTESTMESH_OWNER_KEY": OTHER_KEY})
    assert (
        refused.returncode == 1 and f"{OTHER} is not the owner of cluster {stack.cluster}" in refused.stderr
    )
    assert await cluster.csk_epoch() == epoch

    human = await run_cli(*args, env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"cluster {stack.cluster}: CSK epoch {epoch} -> {epoch + 1} (tx 0x")
    machine = await run_cli(*args, "--json", env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert machine.returncode == 0, machine.stderr
    data = json.loads(machine.stdout)
    assert (data["epoch_before"], data["epoch"], data["changed"]) == (epoch + 1, epoch + 2, True)
    assert data["cluster"] == str(stack.cluster) and data["tx"].startswith("0x")
    assert await cluster.csk_epoch() == epoch + 2

    # --on-remove sets the option only (no rotation), once.
    sent = await nonce(conn, OWNER)
    on = await run_cli(*args, "--on-remove", "on", "--json", env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert on.returncode == 0, on.stderr
    assert json.loads(on.stdout)["rotate_csk_on_remove"] is True and json.loads(on.stdout)["changed"] is True
    again = await run_cli(*args, "--on-remove", "on", env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert again.stdout.endswith("removeMember rotates the CSK: already on; nothing changed\n")
    assert await cluster.rotate_csk_on_remove() and await cluster.csk_epoch() == epoch + 2
    off = await run_cli(*args, "--on-remove", "off", env={"ATTESTMESH_OWNER_KEY": OWNER_KEY})
    assert off.returncode == 0 and "removeMember rotates the CSK: off (tx 0x" in off.stdout
    assert not await cluster.rotate_csk_on_remove()
    assert await nonce(conn, OWNER) == sent + 2
    assert_no_key(refused.stderr, human.stdout, machine.stdout, on.stdout, again.stdout, off.stdout)


# --- --json on the write verbs -----------------------------------------------------------------------------


async def test_write_verbs_report_what_they_did_as_json(
    anvil: AnvilProcess, conn: ChainConnection, stack: Deployment
) -> None:
    """``--json`` on allow-compose, fund and member-app: what changed and the transaction (null when nothing
    was sent), the same facts as their one-line report; a second run says ``changed: false``."""
    env = {"ATTESTMESH_OWNER_KEY": OWNER_KEY}
    new, account = Bytes32(os.urandom(32)), fresh_account()
    name = f"node-{os.urandom(3).hex()}"
    allow = ("chain", "allow-compose", *chain_args(anvil, stack), "--compose-hash", str(new), "--json")
    fund = ("chain", "fund", *chain_args(anvil, stack)[:4], "--to", str(account), "--min-balance", "1",
            "--amount", "2", "--json")  # fmt: skip
    app = ("chain", "member-app", *chain_args(anvil, stack), "--factory", str(stack.member_app_factory),
           "--name", name, "--json")  # fmt: skip
    firsts = [await run_cli(*args, env=env) for args in (allow, fund, app)]  # one owner key: one at a time
    assert [p.returncode for p in firsts] == [0, 0, 0], [p.stderr for p in firsts]
    allowed, funded, made = (json.loads(p.stdout) for p in firsts)
    assert allowed == {"cluster": str(stack.cluster), "compose_hash": str(new), "changed": True,
                       "tx": allowed["tx"]} and allowed["tx"].startswith("0x")  # fmt: skip
    assert funded["account"] == str(account) and funded["funder"] == str(OWNER)
    assert funded["funder_key_variable"] == "ATTESTMESH_OWNER_KEY" and funded["changed"] is True
    assert (funded["balance_before_wei"], funded["balance_after_wei"], funded["sent_wei"]) == (
        0,
        2 * ETH,
        2 * ETH,
    )
    assert funded["min_balance_wei"] == ETH and funded["tx"].startswith("0x")
    predicted = await MemberAppFactoryClient(conn, stack.member_app_factory).predict(stack.cluster, name)
    assert made["name"] == name and made["app_id"] == str(predicted) and made["member_id"] is None
    assert made["changed"] is True and made["approve_tx"].startswith("0x")

    agains = await asyncio.gather(*(run_cli(*args, env=env) for args in (allow, fund, app)))  # sends nothing
    assert [p.returncode for p in agains] == [0, 0, 0], [p.stderr for p in agains]
    for again in (json.loads(p.stdout) for p in agains):
        assert again["changed"] is False
        assert all(again[k] is None for k in ("tx", "deploy_tx", "approve_tx") if k in again)
    assert_no_key(*(p.stdout + p.stderr for p in (*firsts, *agains)))
