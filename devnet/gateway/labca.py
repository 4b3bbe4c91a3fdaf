"""The lab CA: the certificate authority the devnet trusts, and the gateway's wildcard certificate it signs.

Owns ``ensure_lab_ca`` (idempotent: keeps a valid CA and certificate, issues what is missing, invalid,
about to expire or for another domain) and ``LabCa`` (the four paths). Files in the directory::

    ca.pem        the CA certificate (EC P-256, self-signed, path length 0): what lab clients trust
    ca.key        its private key (PKCS#8 PEM, mode 0600)
    gateway.pem   the gateway's certificate for *.<domain> and <domain>, signed by the CA
    gateway.key   its private key (PKCS#8 PEM, mode 0600)

Key files are born 0600 (never readable by others, not even for a moment) and every file is replaced
atomically (written beside, then renamed), so a reader never sees half a file.

Must not: put key material in a repr, an exception message or a log line (``LabCa`` holds paths only).
"""

from __future__ import annotations

import datetime
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY: Final = datetime.timedelta(days=3650)
CERT_VALIDITY: Final = datetime.timedelta(days=365)
RENEW_BEFORE: Final = datetime.timedelta(days=30)
BACKDATE: Final = datetime.timedelta(minutes=5)
KEY_MODE: Final = 0o600
CA_NAME: Final = "AttestMesh devnet lab CA"


@dataclass(frozen=True, slots=True)
class LabCa:
    """Where the lab CA and the gateway certificate live (paths only)."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    domain: str


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)  # os.open's mode is filtered by the umask
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and its key when both files hold a matching P-256 pair, else None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    if cert.public_key() != key.public_key():
        return None
    return cert, key


def _fresh(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now and now + RENEW_BEFORE < cert.not_valid_after_utc


def _issue_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue_server(
    domain: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"*.{domain}")]))
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + CERT_VALIDITY, ca.not_valid_after_utc))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(f"*.{domain}"), x509.DNSName(domain)]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _serves(cert: x509.Certificate, domain: str, ca: x509.Certificate) -> bool:
    """Tell whether ``cert`` was signed by ``ca`` and names exactly ``*.<domain>`` and ``<domain>``."""
    try:
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return set(names.get_values_for_type(x509.DNSName)) == {f"*.{domain}", domain}


def ensure_lab_ca(directory: Path, domain: str, *, now: datetime.datetime | None = None) -> LabCa:
    """Make sure ``directory`` holds a valid lab CA and a certificate for ``*.<domain>``; return the paths."""
    domain = domain.lower()
    moment = now if now is not None else datetime.datetime.now(datetime.UTC)
    directory.mkdir(parents=True, exist_ok=True)
    paths = LabCa(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        cert=directory / "gateway.pem",
        key=directory / "gateway.key",
        domain=domain,
    )
    ca_pair = _load(paths.ca_cert, paths.ca_key)
    if ca_pair is None or not _fresh(ca_pair[0], moment):
        ca_pair = _issue_ca(moment)
        _write_atomically(paths.ca_key, _key_pem(ca_pair[1]), KEY_MODE)
        _write_atomically(paths.ca_cert, ca_pair[0].public_bytes(serialization.Encoding.PEM), 0o644)
    ca, ca_key = ca_pair
    server = _load(paths.cert, paths.key)
    if server is None or not _fresh(server[0], moment) or not _serves(server[0], domain, ca):
        cert, key = _issue_server(domain, ca, ca_key, moment)
        _write_atomically(paths.key, _key_pem(key), KEY_MODE)
        _write_atomically(paths.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    for key_path in (paths.ca_key, paths.key):
        if key_path.stat().st_mode & 0o777 != KEY_MODE:
            os.chmod(key_path, KEY_MODE)
    return paths
