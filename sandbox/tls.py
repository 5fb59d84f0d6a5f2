"""Certificates for the sandbox, generated at start: a private CA, the emulators' server
certificate (localhost, 127.0.0.1, ::1), and the connected app's key pair and certificate.

Services trust the CA through REQUESTS_CA_BUNDLE, exactly as they would a company CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Material:
    ca_path: Path
    server_cert_path: Path
    server_key_path: Path
    app_key_path: Path  # what SF_PRIVATE_KEY_PATH points at
    app_cert_path: Path  # what an admin uploads to the connected app

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert_path, self.server_key_path)
        return context

    def app_public_key_pem(self) -> bytes:
        cert = x509.load_pem_x509_certificate(self.app_cert_path.read_bytes())
        return cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Provisioner Sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:  # type: ignore[no-untyped-def]
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
    )


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def generate(state_dir: Path, hostnames: tuple[str, ...] = ()) -> Material:
    """Write a fresh CA, server certificate and connected-app key pair into `state_dir`.

    `hostnames` are extra names the server certificate covers (compose's service name)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_key, server_key, app_key = _key(), _key(), _key()
    ca_name = _name("Provisioner Sandbox CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        *(_alt_name(name) for name in hostnames if name not in ("localhost", "127.0.0.1", "::1")),
    ]
    server_cert = (
        _builder(_name("localhost"), ca_name, server_key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    app_cert = _builder(
        _name("sandbox connected app"), _name("sandbox connected app"), app_key.public_key()
    ).sign(app_key, hashes.SHA256())
    material = Material(
        state_dir / "ca.pem",
        state_dir / "server.pem",
        state_dir / "server-key.pem",
        state_dir / "sf-private.key",
        state_dir / "sf-app-cert.pem",
    )
    pem = serialization.Encoding.PEM
    _write(material.ca_path, ca_cert.public_bytes(pem))
    _write(material.server_cert_path, server_cert.public_bytes(pem))
    _write(material.server_key_path, _pem_key(server_key), 0o600)
    _write(material.app_key_path, _pem_key(app_key), 0o600)
    _write(material.app_cert_path, app_cert.public_bytes(pem))
    return material
