"""sidecar.envkit: declared variables read with every problem collected; unknown names; no secret echoed."""

from __future__ import annotations

import pytest

from sidecar.envkit import (
    AT_LEAST_ONE,
    POSITIVE,
    Declare,
    EnvReader,
    HostPort,
    parse_int,
    parse_listen_addr,
    parse_seconds,
    split_host_port,
)

_v = Declare("KIT_")
TABLE = (
    _v("PIN", "pin", None, parse_int, secret=True),
    _v("COUNT", "count", "3", parse_int, AT_LEAST_ONE),
    _v("WAIT", "wait", "", parse_seconds, POSITIVE),
    _v("LISTEN", "listen", "127.0.0.1:80", parse_listen_addr),
)


def read(**env: str) -> tuple[dict[str, object], list[str]]:
    reader = EnvReader({f"KIT_{k}": v for k, v in env.items()}, TABLE, "KIT_")
    reader.reject_unknown("kit variable", suggest=True)
    return reader.read_all(), reader.problems


def test_a_row_declares_name_field_default_parser_and_rule() -> None:
    count = TABLE[1]
    assert (count.name, count.field, count.default, count.parse) == ("KIT_COUNT", "count", "3", parse_int)
    assert count.check is not None and not count.check(0) and count.rule == "at least 1"
    assert TABLE[0].secret and not count.secret


def test_defaults_apply_and_a_blank_optional_reads_as_none() -> None:
    values, found = read(PIN="1234", WAIT="  ")
    assert found == []
    assert values == {
        "KIT_PIN": 1234,
        "KIT_COUNT": 3,
        "KIT_WAIT": None,
        "KIT_LISTEN": HostPort("127.0.0.1", 80),
    }


def test_every_problem_is_collected_and_a_secret_is_never_echoed() -> None:
    values, found = read(PIN="sk-secret", COUNT="0", WAIT="-1", LISTEN="example.com:80", CUONT="9")
    assert found == [
        "KIT_CUONT is not a known kit variable (did you mean KIT_COUNT?)",
        "KIT_PIN (value not shown) must be a whole number written in decimal digits",
        "KIT_COUNT='0' must be at least 1",
        "KIT_WAIT='-1' must be a number of seconds such as 2 or 0.5",
        "KIT_LISTEN='example.com:80' host must be an IP address (or localhost)",
    ]
    assert set(values.values()) == {None}
    assert "sk-secret" not in "\n".join(found)
    assert read()[1][0] == "KIT_PIN is required but not set"


@pytest.mark.parametrize(
    ("text", "parts"),
    [("10.0.0.1:5", ("10.0.0.1", "5")), ("[fd00::1]:5", ("fd00::1", "5")), ("h:x", ("h", "x"))],
)
def test_split_host_port(text: str, parts: tuple[str, str]) -> None:
    assert split_host_port(text) == parts
