"""The lab CA (``devnet.gateway.labca``): a P-256 CA and a wildcard certificate for ``*.<domain>`` and
``<domain>`` signed by it, private keys 0600 from birth, idempotent (a second call changes nothing),
repaired when a file is damaged, reissued for another domain or near expiry while the CA is kept, and no
key material in a repr."""

from __future__ import annotations

import datetime
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from devnet.gateway.labca import LabCa, ensure_lab_ca

pytestmark = [pytest.mark.component, pytest.mark.timeout(30)]

DOMAIN = "amlab.gw.test"


def contents(ca: LabCa) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (ca.ca_cert, ca.ca_key, ca.cert, ca.key)}


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_a_fresh_directory_gets_a_ca_and_a_wildcard_certificate_it_signed(tmp_path: Path) -> None:
    previous = os.umask(0)  # even a permissive umask must not widen the key files
    try:
        ca = ensure_lab_ca(tmp_path / "ca", "AMLAB.gw.test")
    finally:
        os.umask(previous)
    assert ca == LabCa(
        ca_cert=tmp_path / "ca" / "ca.pem",
        ca_key=tmp_path / "ca" / "ca.key",
        cert=tmp_path / "ca" / "gateway.pem",
        key=tmp_path / "ca" / "gateway.key",
        domain=DOMAIN,
    )
    for key in (ca.ca_key, ca.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    root, leaf = certificate(ca.ca_cert), certificate(ca.cert)
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(root)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [f"*.{DOMAIN}", DOMAIN]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    context = ssl.create_default_context(cafile=str(ca.ca_cert))  # what lab clients do
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(ca.cert, ca.key)  # the pair matches
    assert context.cert_store_stats()["x509_ca"] == 1
    assert "PRIVATE" not in repr(ca) and "BEGIN" not in repr(ca)


def test_a_second_call_changes_nothing(tmp_path: Path) -> None:
    first = ensure_lab_ca(tmp_path, DOMAIN)
    before = contents(first)
    assert ensure_lab_ca(tmp_path, DOMAIN) == first
    assert contents(first) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key", "ca.pem", "gateway.key", "gateway.pem"]


def test_another_domain_or_a_damaged_file_reissues_the_certificate_and_keeps_the_ca(tmp_path: Path) -> None:
    ca = ensure_lab_ca(tmp_path, DOMAIN)
    before = contents(ca)
    other = ensure_lab_ca(tmp_path, "other.test")
    after = contents(other)
    assert after["ca.pem"] == before["ca.pem"] and after["ca.key"] == before["ca.key"]
    assert after["gateway.pem"] != before["gateway.pem"]
    names = certificate(other.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["*.other.test", "other.test"]

    other.key.write_text("damaged")
    repaired = contents(ensure_lab_ca(tmp_path, "other.test"))
    assert repaired["ca.pem"] == before["ca.pem"] and repaired["gateway.key"] != b"damaged"

    other.ca_key.unlink()  # a lost CA key: a new CA, and a new certificate signed by it
    renewed = ensure_lab_ca(tmp_path, "other.test")
    assert renewed.ca_cert.read_bytes() != before["ca.pem"]
    certificate(renewed.cert).verify_directly_issued_by(certificate(renewed.ca_cert))


def test_a_certificate_near_its_expiry_is_renewed(tmp_path: Path) -> None:
    ca = ensure_lab_ca(tmp_path, DOMAIN)
    before = contents(ca)
    expiry = certificate(ca.cert).not_valid_after_utc
    ensure_lab_ca(tmp_path, DOMAIN, now=expiry - datetime.timedelta(days=40))
    assert contents(ca) == before
    ensure_lab_ca(tmp_path, DOMAIN, now=expiry - datetime.timedelta(days=10))
    after = contents(ca)
    assert after["gateway.pem"] != before["gateway.pem"] and after["ca.pem"] == before["ca.pem"]
