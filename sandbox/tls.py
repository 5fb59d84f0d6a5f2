"""Certificates for the sandbox, generated at start: a private CA, the emulators' server
certificate (localhost, 127.0.0.1, ::1), and the connected app's key pair and certificate.

Services trust the CA through REQUESTS_CA_BUNDLE, exactly as they would a company CA.
"""

from __future__ import annotations

import datetime
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ORGANIZATION = "Provisioner Sandbox"


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


def _connected_app() -> tuple[bytes, bytes]:
    """The app's RSA key (PKCS#8, as `openssl req -newkey` writes it; JWTs are RS256) and its
    self-signed certificate, as the README's setup makes them for a real org."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, "sandbox connected app"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return private, cert.public_bytes(pem)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


def generate(state_dir: Path, hostnames: tuple[str, ...] = ()) -> Material:
    """Write a fresh CA, server certificate and connected-app key pair into `state_dir`.

    `hostnames` are extra names the server certificate covers (compose's service name)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    rsa_key = trustme.KeyType.RSA
    ca = trustme.CA(organization_name=ORGANIZATION, key_type=rsa_key)
    names = dict.fromkeys(("localhost", "127.0.0.1", "::1", *hostnames))
    server = ca.issue_cert(
        *names, common_name="localhost", organization_name=ORGANIZATION, key_type=rsa_key
    )
    app_key, app_cert = _connected_app()
    material = Material(
        state_dir / "ca.pem",
        state_dir / "server.pem",
        state_dir / "server-key.pem",
        state_dir / "sf-private.key",
        state_dir / "sf-app-cert.pem",
    )
    _write(material.ca_path, ca.cert_pem.bytes())
    _write(material.server_cert_path, server.cert_chain_pems[0].bytes())
    _write(material.server_key_path, server.private_key_pem.bytes(), 0o600)
    _write(material.app_key_path, app_key, 0o600)
    _write(material.app_cert_path, app_cert)
    return material
