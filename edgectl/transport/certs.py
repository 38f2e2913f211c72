"""Self-signed OPC UA application instance certificates, for the simulator and for tests.

A real site uses the certificates its operator issues; these follow the shape OPC UA
(Part 6, 6.2.2) expects of a self-signed application certificate so that asyncua's trust
store and other stacks accept them: RSA 2048 with SHA-256, the application URI as a SAN
URI, host names as SAN DNS names, keyCertSign with CA:true (a self-signed certificate is
its own issuer), and client and/or server authentication as extended key usage.
The certificate is written in DER, the private key in unencrypted PKCS#8 PEM.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgectl.errors import InputError, Problem


def make_self_signed(
    cert_path: Path,
    key_path: Path,
    *,
    application_uri: str,
    common_name: str,
    hosts: Sequence[str] | None = None,
    client: bool = True,
    server: bool = True,
    days: int = 365,
) -> None:
    """Write a new key and a self-signed certificate for `application_uri` to the paths;
    `hosts` (DNS names or IP addresses) default to this machine's name and loopback."""
    if hosts is None:
        hosts = (socket.gethostname(), "localhost", "127.0.0.1")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] * client + [ExtendedKeyUsageOID.SERVER_AUTH] * server
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)


def application_uri(cert_path: Path) -> str | None:
    """The first SAN URI of a DER or PEM certificate: the application it identifies."""
    data = cert_path.read_bytes()
    cert = (
        x509.load_pem_x509_certificate(data)
        if data.lstrip().startswith(b"-----")
        else x509.load_der_x509_certificate(data)
    )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def ca_context(ca_file: Path | None) -> ssl.SSLContext:
    """A TLS client context trusting ca_file (the system's CAs when None); InputError naming
    the file when it cannot be used."""
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(
            [Problem(str(ca_file), "", f"cannot use as a CA file: {reason}")]
        ) from None


def read_secret(path: Path, what: str) -> str:
    """The text of a secret file (a token, a password); InputError naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError([Problem(str(path), "", f"cannot read the {what}: {reason}")]) from None
    except UnicodeDecodeError:
        raise InputError([Problem(str(path), "", f"the {what} is not valid UTF-8")]) from None
