"""TLS for the gateway transport: the listener's certificate, made at start, and the dialer's context.

The certificate authenticates nothing, by design: the gateway relays a passthrough route untouched, the
dialer proves who it is with the signed hello (``sidecar.core.streamwire``), and the acceptor proves who it
is by answering the WireGuard handshake, which only the holder of its on-chain WireGuard key can. So the
listener presents a fresh self-signed certificate and the dialer accepts any; TLS here is what the
gateway's SNI routing needs, plus confidentiality of the (already encrypted) WireGuard datagrams' framing.

Owns ``server_context`` (an EC P-256 self-signed certificate; its private key is loaded from an anonymous
memory file, so it never touches a disk) and ``client_context``; and, for what the node reaches through
the gateway's terminated routes (the indexer's ``wss://``), ``verifying_context``: the system roots plus
``ATTESTMESH_CA_FILE`` when set (the devnet's lab CA), hostname checked.

Must not: write a key to the file system, log or repr key material.
"""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_VALIDITY = datetime.timedelta(days=365)


def _self_signed_pem(common_name: str) -> bytes:
    """A self-signed certificate and its key, PEM, for ``common_name`` (also its only DNS name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key_pem


def server_context(common_name: str) -> ssl.SSLContext:
    """The listener's context: TLS 1.2 or later, a fresh self-signed certificate, no client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    fd = os.memfd_create("attestmesh-transport-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, _self_signed_pem(common_name))
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    return context


def client_context() -> ssl.SSLContext:
    """The dialer's context: TLS 1.2 or later, any certificate (the hello and WireGuard authenticate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def verifying_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies the server: the system roots, plus the CAs in ``ca_file``."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context
