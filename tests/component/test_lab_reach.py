"""The lab's own reads through a gateway (``devnet.labreach``) against a real TLS server on loopback: a name
under the gateway domain pinned to the gateway's address, the certificate checked with the lab CA, TLS 1.2
like the stand-in's terminated routes. Loopback only; the server stops with the test."""

from __future__ import annotations

import datetime
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devnet.labreach import LabReach
from devnet.state import GatewayState
from ops.jsonget import Unreachable, get_json

pytestmark = [pytest.mark.component, pytest.mark.timeout(30)]

DOMAIN = "amtg.gw.test"
NAME = f"{'ab' * 20}-9090.{DOMAIN}"


def _ca_and_cert(directory: Path, common_name: str) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA for {common_name}")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 503 if self.path == "/unhealthy" else 200
        body = json.dumps(
            {"host": self.headers["Host"], "path": self.path, "healthy": status == 200}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    ca, cert, key = _ca_and_cert(tmp_path / "lab", f"*.{DOMAIN}")
    other_ca, _, _ = _ca_and_cert(tmp_path / "other", f"*.{DOMAIN}")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.maximum_version = ssl.TLSVersion.TLSv1_2  # as the stand-in's terminated routes
    tls.load_cert_chain(cert, key)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], ca, other_ca
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_a_name_under_the_domain_is_pinned_and_verified(server: tuple[int, Path, Path]) -> None:
    port, ca, other_ca = server
    url = f"https://{NAME}:{port}/healthz"
    answer = get_json(url, 3.0, ca_file=str(ca), connect_to="127.0.0.1")
    assert answer.ok and answer.data == {"host": f"{NAME}:{port}", "path": "/healthz", "healthy": True}
    unhealthy = get_json(f"https://{NAME}:{port}/unhealthy", 3.0, ca_file=str(ca), connect_to="127.0.0.1")
    assert unhealthy.status == 503 and unhealthy.data["healthy"] is False  # a 503 still carries its document

    gateway = GatewayState(domain=DOMAIN, address="127.0.0.1", ca_file=str(ca), health_url="")
    assert LabReach(gateway).get_json(url, 3.0).data["path"] == "/healthz"

    with pytest.raises(Unreachable):  # another CA: the certificate does not verify
        get_json(url, 3.0, ca_file=str(other_ca), connect_to="127.0.0.1")
    with pytest.raises(Unreachable):  # two labels below the domain: the wildcard does not cover it
        get_json(f"https://a.{NAME}:{port}/healthz", 3.0, ca_file=str(ca), connect_to="127.0.0.1")
    with pytest.raises(Unreachable):
        get_json(f"http://{NAME}:{port}/healthz", 3.0, ca_file=str(ca), connect_to="127.0.0.1")
