"""A local cluster's own TLS files (``snooze cluster up --tls``): a private authority, and one
certificate it signed for every process on this machine (127.0.0.1, ::1, localhost).

The authority's key signs once and is never written: nobody can sign another certificate
this cluster trusts. The server key is written mode 0600, like the cluster's configs. Made
with the ``cryptography`` library; its errors become ``TlsFilesError``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LOCAL_NAMES", "TlsFiles", "TlsFilesError", "make_local_tls"]

#: What the certificate of a local cluster's processes names (they listen on 127.0.0.1).
LOCAL_NAMES = ("127.0.0.1", "::1", "localhost")
#: Long enough for any local cluster's life; short enough not to outlive the machine's use.
VALID_DAYS = 30


class TlsFilesError(RuntimeError):
    pass


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # the authority's certificate: what clients check against (cluster.json caCert)
    cert: Path  # every process's certificate ([node] tls_cert)
    key: Path  # its key, mode 0600 ([node] tls_key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Snooze local cluster"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


def make_local_tls(directory: Path, names: tuple[str, ...] = LOCAL_NAMES) -> TlsFiles:
    """A new authority and a certificate for ``names`` (addresses or host names), in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)
    try:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name(f"Snooze local cluster CA ({directory.parent.name})")
        ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        cert = (x509.CertificateBuilder().subject_name(_name("snooze")).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        files = TlsFiles(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
        _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(files.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), 0o600)
    except (ValueError, TypeError, OSError) as exc:
        raise TlsFilesError(f"cannot make the local cluster's TLS files in {directory}: {exc}") from exc
    return files
