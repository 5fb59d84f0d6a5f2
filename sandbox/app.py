"""The sandbox: both emulators over TLS and the admin API, started together on loopback.

`Sandbox.start(state_dir)` writes fresh certificates into `state_dir`, starts the servers on
free ports (or the ones given) and exposes `env`: the variables that point the services at it.
"""

from __future__ import annotations

import secrets
import shlex
from dataclasses import dataclass
from pathlib import Path

from sandbox import tls
from sandbox.admin import AdminApp
from sandbox.emulators import Emulators
from sandbox.faults import FaultBook
from sandbox.http_server import Server
from sandbox.salesforce.emulator import SalesforceEmulator
from sandbox.whmcs.emulator import WhmcsEmulator

CLIENT_ID = "sandbox-consumer-key"
USERNAME = "integration@sandbox.example"
WHMCS_PATH = "/includes/api.php"
LOOPBACK = ("127.0.0.1", "localhost", "0.0.0.0", "::", "::1")


def _url(scheme: str, host: str, port: int, public_host: str | None) -> str:
    name = public_host or ("localhost" if host in LOOPBACK else host)
    return f"{scheme}://{name}:{port}"


@dataclass
class Sandbox(Emulators):
    state_dir: Path
    material: tls.Material
    servers: list[Server]
    env: dict[str, str]
    admin_url: str

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        sf_port: int = 0,
        whmcs_port: int = 0,
        admin_port: int = 0,
        pubsub_port: int = 0,
        cometd_timeout: float = 110.0,
        reconnect_timeout: float = 40.0,
        public_host: str | None = None,
        pricebook_id: str | None = None,
        whmcs_identifier: str | None = None,
        whmcs_secret: str | None = None,
    ) -> Sandbox:
        state_dir = Path(state_dir).resolve()
        material = tls.generate(state_dir, (public_host,) if public_host else ())
        faults = FaultBook()
        salesforce = SalesforceEmulator(
            faults,
            material.app_public_key_pem(),
            client_id=CLIENT_ID,
            username=USERNAME,
            cometd_timeout=cometd_timeout,
            reconnect_timeout=reconnect_timeout,
            pricebook_id=pricebook_id,
        )
        whmcs = WhmcsEmulator(
            faults,
            identifier=whmcs_identifier or secrets.token_urlsafe(24),
            secret=whmcs_secret or secrets.token_urlsafe(24),
        )
        sandbox = cls(faults, salesforce, whmcs, state_dir, material, [], {}, "")
        sandbox._serve(host, (sf_port, whmcs_port, admin_port), public_host)
        sandbox._serve_pubsub(host, pubsub_port, public_host)
        return sandbox

    def _serve(self, host: str, ports: tuple[int, int, int], public_host: str | None) -> None:
        """Start the three servers; the URLs they got make the environment block."""
        context = self.material.server_context()
        sf_server = Server(self.salesforce.handle, host, ports[0], context)
        whmcs_server = Server(self.whmcs.handle, host, ports[1], context)
        admin_server = Server(AdminApp(self), host, ports[2])
        self.salesforce.base_url = _url("https", host, sf_server.port, public_host)
        whmcs_url = _url("https", host, whmcs_server.port, public_host) + WHMCS_PATH
        self.admin_url = _url("http", host, admin_server.port, None)
        self.env = {
            "SF_LOGIN_URL": self.salesforce.base_url,
            "SF_CLIENT_ID": CLIENT_ID,
            "SF_USERNAME": USERNAME,
            "SF_PRIVATE_KEY_PATH": str(self.material.app_key_path),
            "PORTAL_PRICEBOOK_ID": self.salesforce.pricebook_id,
            "WHMCS_API_URL": whmcs_url,
            "WHMCS_API_IDENTIFIER": self.whmcs.identifier,
            "WHMCS_API_SECRET": self.whmcs.secret,
            "REQUESTS_CA_BUNDLE": str(self.material.ca_path),
        }
        self.servers = [sf_server.start(), whmcs_server.start(), admin_server.start()]

    def _serve_pubsub(self, host: str, port: int, public_host: str | None) -> None:
        """The Pub/Sub API over gRPC, with the same certificate (and CA) as the HTTPS servers.

        grpc reads its trusted roots from GRPC_DEFAULT_SSL_ROOTS_FILE_PATH, as requests reads
        REQUESTS_CA_BUNDLE: the subscriber trusts the sandbox the way it would a company CA."""
        port = self.salesforce.pubsub.start(
            host,
            port,
            self.material.server_cert_path.read_bytes(),
            self.material.server_key_path.read_bytes(),
        )
        name = _url("https", host, port, public_host).removeprefix("https://")
        self.env["SF_PUBSUB_ENDPOINT"] = name
        self.env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(self.material.ca_path)

    def env_lines(self) -> list[str]:
        """The environment block as `NAME=value` lines a shell can eval."""
        values = {**self.env, "SANDBOX_ADMIN_URL": self.admin_url}
        return [f"{name}={shlex.quote(value)}" for name, value in values.items()]

    def stop(self) -> None:
        self.salesforce.pubsub.stop()
        for server in reversed(self.servers):
            server.stop()
        self.servers = []
