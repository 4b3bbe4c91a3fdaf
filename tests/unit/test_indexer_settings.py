"""The indexer's settings and its pure in-memory index (coverage, retention, reorg cuts)."""

from __future__ import annotations

import pytest

from indexer.chainindex import HASH_WINDOW, ChainIndex
from indexer.heads import head_number
from indexer.settings import PREFIX, SettingsError, load_settings, parse_address_list
from sidecar.core.cursor import Cursor
from sidecar.core.ids import Address, Bytes32, MemberId
from sidecar.core.model import ChainLog

FACTORY = "0x" + "11" * 20
CLUSTER = Address(b"\x22" * 20)
OTHER = Address(b"\x33" * 20)
TOPIC = Bytes32(b"\x44" * 32)


def env(**values: str) -> dict[str, str]:
    base = {"RPC_URL": "http://127.0.0.1:8545", "CHAIN_ID": "31337", "CLUSTER_FACTORY": FACTORY,
            "START_BLOCK": "100"}  # fmt: skip
    base.update(values)
    return {PREFIX + k: v for k, v in base.items()}


def test_defaults() -> None:
    s = load_settings(env())
    assert s.start_block == 100 and s.cluster_factory == Address(b"\x11" * 20)
    assert str(s.listen_addr) == "0.0.0.0:8080" and s.confirmations == 2 and s.queue_bound == 256
    assert s.clusters == () and s.code_id is None and s.indexer_registry is None and s.key_version == 1
    assert "8545" not in repr(s)


def test_every_problem_at_once_and_no_secret_echo() -> None:
    bad = env(START_BLOCK="", CHAIN_ID="0", QUEUE_BOUND="0", RPC_URL="ftp://user:secret@x",
              CODE_ID="0x12", TYPO="1", KEY_VERSION="0")  # fmt: skip
    with pytest.raises(SettingsError) as info:
        load_settings(bad)
    text = "\n".join(info.value.problems)
    for name in ("START_BLOCK", "CHAIN_ID", "QUEUE_BOUND", "RPC_URL", "CODE_ID", "TYPO", "KEY_VERSION"):
        assert PREFIX + name in text
    assert "secret" not in text


def test_something_to_follow_is_required() -> None:
    with pytest.raises(SettingsError, match="nothing to follow"):
        load_settings(env(CLUSTER_FACTORY=""))
    s = load_settings(env(CLUSTER_FACTORY="", CLUSTERS=f"{CLUSTER}, {OTHER}"))
    assert s.clusters == (CLUSTER, OTHER) and s.cluster_factory is None


def test_start_block_zero_must_be_explicit() -> None:
    assert load_settings(env(START_BLOCK="0")).start_block == 0


def test_address_list() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_address_list(f"{CLUSTER},{CLUSTER}")
    with pytest.raises(ValueError, match="zero"):
        parse_address_list("0x" + "00" * 20)


def log(block: int, index: int, address: Address = CLUSTER, member: bytes = b"\x01") -> ChainLog:
    return ChainLog(
        address=address,
        topics=(TOPIC, Bytes32(member * 32)),
        data=b"",
        block_number=block,
        block_hash=Bytes32(bytes([block % 256]) * 32),
        tx_hash=Bytes32(b"\x99" * 32),
        log_index=index,
    )


def h(block: int) -> Bytes32:
    return Bytes32(bytes([block % 256]) * 32)


def test_commit_next_after_and_checkpoint_position() -> None:
    index = ChainIndex(100, [CLUSTER])
    assert index.next_block == 100 and index.through_hash is None
    index.commit(110, h(110), [log(105, 3), log(101, 0), log(105, 1, OTHER)])
    assert index.through == 110 and index.next_block == 111
    first = index.next_after(CLUSTER, Cursor.start(100))
    assert first is not None and (first.block_number, first.log_index) == (101, 0)
    second = index.next_after(CLUSTER, Cursor(101, 0, h(101)))
    assert second is not None and second.block_number == 105
    assert index.next_after(CLUSTER, Cursor(105, 3, h(105))) is None
    assert not index.follows(OTHER)
    with pytest.raises(ValueError):
        index.commit(110, h(110), [])
    with pytest.raises(ValueError):
        index.commit(120, h(120), [log(105, 9)])


def test_discovered_clusters_and_registration_block() -> None:
    index = ChainIndex(100)
    commit = index.commit(110, h(110), [log(107, 0, OTHER, b"\x07")], discovered={OTHER: 106})
    assert commit.discovered == (OTHER,) and commit.added == {OTHER: 1}
    assert index.registration_block(OTHER, MemberId(b"\x07" * 32), TOPIC) == 107
    assert index.registration_block(OTHER, MemberId(b"\x08" * 32), TOPIC) is None


def test_reorg_cut_drops_the_suffix_and_forgets_new_clusters() -> None:
    index = ChainIndex(100, [CLUSTER])
    index.commit(110, h(110), [log(105, 0)])
    index.commit(120, h(120), [log(115, 0), log(116, 0, OTHER)], discovered={OTHER: 114})
    assert index.stored_hashes_descending()[0] == (120, h(120))
    forgotten = index.cut_after(110)
    assert forgotten == [OTHER] and index.through == 110 and index.through_hash == h(110)
    assert index.next_after(CLUSTER, Cursor(105, 0, h(105))) is None
    index.cut_after(50)  # deeper than anything stored: rescan from the start block
    assert index.through == 99 and index.next_after(CLUSTER, Cursor.start(100)) is None
    assert index.follows(CLUSTER)  # explicit clusters stay


def test_retention_refuses_starts_before_the_floor() -> None:
    index = ChainIndex(100, [CLUSTER], retain_logs=2)
    index.commit(110, h(110), [log(101, 0), log(102, 0), log(103, 0)])
    assert not index.servable(CLUSTER, Cursor.start(100))
    assert index.servable(CLUSTER, Cursor(101, 0, h(101)))
    assert index.servable(CLUSTER, Cursor.through(105, h(105)))
    assert not index.servable(OTHER, Cursor.start(100))


def test_hash_window_is_bounded_and_head_lag() -> None:
    index = ChainIndex(0, [CLUSTER])
    for block in range(HASH_WINDOW + 10):
        index.commit(block, h(block), [])
    assert len(index.hashes) == HASH_WINDOW
    assert index.head_lag(None, 0) is None
    assert index.head_lag(index.through + 5, 2) == 3 and index.head_lag(index.through, 2) == 0


def test_the_heads_subscription_url_is_derived_from_the_rpc_url_unless_set_or_off() -> None:
    assert load_settings(env()).ws_url == "ws://127.0.0.1:8545"
    keyed = load_settings(env(RPC_URL="https://node.example/v2/secretkey"))
    assert keyed.ws_url == "wss://node.example/v2/secretkey" and "secretkey" not in repr(keyed)
    assert load_settings(env(WS_URL="ws://10.0.0.1:8546/")).ws_url == "ws://10.0.0.1:8546/"
    assert load_settings(env(WS_URL="off")).ws_url is None
    for bad in ("http://127.0.0.1:8545", "ws://", "OFF", "wss:///path"):
        with pytest.raises(SettingsError, match=PREFIX + "WS_URL"):
            load_settings(env(WS_URL=bad))


@pytest.mark.parametrize(
    "notice",
    [
        None,
        "0x10",
        [],
        {"method": "eth_subscription"},
        {"method": "eth_subscription", "params": []},
        {"method": "eth_subscription", "params": {"result": None}},
        {"method": "eth_subscription", "params": {"result": {"number": 16}}},
        {"method": "eth_subscription", "params": {"result": {"number": "16"}}},
        {"method": "eth_subscription", "params": {"result": {"number": "0x"}}},
        {"method": "eth_subscription", "params": {"result": {"number": "0xgg"}}},
        {"method": "other", "params": {"result": {"number": "0x10"}}},
        {"jsonrpc": "2.0", "id": 1, "result": "0x1"},
    ],
)
def test_anything_but_a_head_notice_is_ignored(notice: object) -> None:
    assert head_number(notice) is None


def test_a_head_notice_gives_its_block_number() -> None:
    notice = {"method": "eth_subscription", "params": {"subscription": "0x1", "result": {"number": "0x1f"}}}
    assert head_number(notice) == 31
