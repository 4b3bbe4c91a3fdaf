"""What the operator views may show of a URL: scheme, host and port, never user info, path keys or query."""

from __future__ import annotations

import pytest

from ops.redact import REDACTED, display_url, scrub

PROVIDER = "https://us%65r:p%40ss@eth.example.com:8443/v2/k3y0f7h3pr0v1d3r?apikey=t0k3nv4lu3#frag1234"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (PROVIDER, "https://eth.example.com:8443"),
        ("http://user:secret@127.0.0.1:9/", "http://127.0.0.1:9"),
        ("http://[::1]:8545/rpc", "http://[::1]:8545"),
        ("https://mainnet.infura.io/v3/abcdef0123456789", "https://mainnet.infura.io"),
        ("not a url", REDACTED),
        ("http://host:notaport/", REDACTED),
    ],
)
def test_display_url_keeps_scheme_host_and_port_only(url: str, shown: str) -> None:
    assert display_url(url) == shown


def test_scrub_removes_every_credential_in_raw_and_decoded_form() -> None:
    text = (
        f"failed {PROVIDER}; user user, password p@ss or p%40ss; key k3y0f7h3pr0v1d3r;"
        " query apikey=t0k3nv4lu3, value t0k3nv4lu3; host eth.example.com:8443"
    )
    scrubbed = scrub(text, PROVIDER)
    for secret in ("p@ss", "p%40ss", "k3y0f7h3pr0v1d3r", "t0k3nv4lu3", "frag1234", PROVIDER):
        assert secret not in scrubbed
    assert "eth.example.com:8443" in scrubbed  # the host is not a secret


def test_scrub_keeps_a_health_path_when_told_it_is_not_secret() -> None:
    url = "http://10.13.0.2:9090/healthz?token=s3cr3tt0k3n"
    text = f"GET {url} failed; /healthz answered nothing"
    assert scrub(text, url, path_is_secret=False) == f"GET {REDACTED} failed; /healthz answered nothing"
    assert "healthz" not in scrub("/healthz answered nothing", url)
    assert "s3cr3tt0k3n" not in scrub("token=s3cr3tt0k3n", url, path_is_secret=False)
