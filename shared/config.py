"""The only reader of the environment: one table of variables, parsed into frozen settings.

Each process asks for the groups it needs (`load_settings(os.environ, needs={"salesforce"})`);
every missing or invalid variable of those groups is reported at once in one ConfigError.
The README's configuration table is generated from VARIABLES and a test holds the two in sync.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shared.errors import ConfigError

DEFAULT_CHANNEL = "/event/OrderProvisionRequested__e"
PRODUCTION_KEY_PATH = "/app/secrets/sf-private.key"


@dataclass(frozen=True)
class Var:
    name: str
    group: str  # "core" is always read; the others only when a process needs them
    example: str
    doc: str
    default: str | None = None  # None: required in its group
    secret: bool = False


VARIABLES: tuple[Var, ...] = (
    Var("APP_ENV", "core", "production", "Environment name reported by /health.", "development"),
    Var("LOG_LEVEL", "core", "INFO", "DEBUG, INFO, WARNING or ERROR.", "INFO"),
    Var(
        "REDIS_URL",
        "core",
        "redis://redis:6379/0",
        "Queue, replay id, locks, token cache.",
        "redis://127.0.0.1:6379/0",
        secret=True,
    ),
    Var(
        "DATABASE_URL",
        "core",
        "postgresql+psycopg://app:pw@postgres/app",
        "SQLAlchemy URL of the fulfilment database.",
        "sqlite:///provisioning.db",
        secret=True,
    ),
    Var(
        "PROVISION_QUEUE", "core", "provisioning", "RQ queue the subscriber feeds.", "provisioning"
    ),
    Var(
        "JOB_TIMEOUT",
        "core",
        "600",
        "Seconds before RQ kills a fulfilment job (a backstop).",
        "600",
    ),
    Var(
        "ORDER_LOCK_TTL",
        "core",
        "30",
        "Seconds a dead worker's order lease lasts before the reaper fails the order.",
        "30",
    ),
    Var("HTTP_CONNECT_TIMEOUT", "core", "5", "Connect timeout of every HTTP call, seconds.", "5"),
    Var(
        "SF_LOGIN_URL",
        "salesforce",
        "https://login.salesforce.com",
        "OAuth token host for the JWT bearer flow.",
    ),
    Var("SF_CLIENT_ID", "salesforce", "3MVG9...", "Connected app consumer key (JWT iss)."),
    Var("SF_USERNAME", "salesforce", "integration@isp.example", "API user (JWT sub)."),
    Var(
        "SF_PRIVATE_KEY_PATH",
        "salesforce",
        PRODUCTION_KEY_PATH,
        "PEM private key of the connected app certificate; mode 0600.",
    ),
    Var(
        "SF_AUDIENCE",
        "salesforce",
        "https://test.salesforce.com",
        "JWT aud; defaults to the scheme and host of SF_LOGIN_URL.",
        "",
    ),
    Var("SF_API_VERSION", "salesforce", "59.0", "REST and CometD API version (>= 37.0).", "59.0"),
    Var("SF_TIMEOUT", "salesforce", "30", "Read timeout of Salesforce REST calls, seconds.", "30"),
    Var("SF_EVENTS_ENABLED", "events", "true", "false: the subscriber idles without connecting."),
    Var(
        "SF_PROVISION_EVENT_CHANNEL",
        "events",
        DEFAULT_CHANNEL,
        "Platform event channel.",
        DEFAULT_CHANNEL,
    ),
    Var(
        "SF_EVENTS_REPLAY",
        "events",
        "LATEST",
        "LATEST resumes from the stored replay id; ALL replays every retained event once.",
        "LATEST",
    ),
    Var(
        "SF_EVENTS_TRANSPORT",
        "events",
        "cometd",
        "cometd (Streaming API long-polling) or pubsub (Pub/Sub API over gRPC).",
        "cometd",
    ),
    Var(
        "SF_PUBSUB_ENDPOINT",
        "events",
        "api.pubsub.salesforce.com:7443",
        "host:port of the Pub/Sub API (TLS); the sandbox prints its own.",
        "api.pubsub.salesforce.com:7443",
    ),
    Var(
        "SF_PUBSUB_STALL_TIMEOUT",
        "events",
        "330",
        "Seconds without an event or keepalive before pubsub resubscribes (server: 270).",
        "330",
    ),
    Var(
        "PORTAL_PRICEBOOK_ID",
        "orders",
        "01s5g00000PBK01AAA",
        "The price book every provisioned order must use.",
    ),
    Var(
        "SF_ACCOUNT_CLIENT_FIELD",
        "orders",
        "WHMCS_Client_ID__c",
        "Account field holding the WHMCS client id when the database has no mapping.",
        "WHMCS_Client_ID__c",
    ),
    Var(
        "WHMCS_API_URL",
        "whmcs",
        "https://billing.isp.example/includes/api.php",
        "WHMCS External API endpoint.",
    ),
    Var(
        "WHMCS_API_IDENTIFIER",
        "whmcs",
        "D4j1dKYE3g40VROOPCGyJ9zRwPz4",
        "API credential id.",
        secret=True,
    ),
    Var(
        "WHMCS_API_SECRET",
        "whmcs",
        "F1CKGXRIpylMfsrig3mwwdSdYUdLiFlo",
        "API credential secret.",
        secret=True,
    ),
    Var(
        "WHMCS_API_ACCESS_KEY",
        "whmcs",
        "s3cr3t-access-key",
        "Optional access key that bypasses the WHMCS IP allow-list.",
        "",
        secret=True,
    ),
    Var(
        "WHMCS_DEFAULT_GATEWAY",
        "whmcs",
        "stripe",
        "Gateway when neither the pay method nor the client names one.",
        "",
    ),
    Var("WHMCS_READ_TIMEOUT", "whmcs", "15", "Read timeout of WHMCS read actions, seconds.", "15"),
    Var(
        "WHMCS_WRITE_TIMEOUT",
        "whmcs",
        "60",
        "Read timeout of AddOrder and AcceptOrder, seconds.",
        "60",
    ),
    Var(
        "RQ_DASHBOARD_ENABLED",
        "dashboard",
        "true",
        "Mount rq-dashboard under /rq in the health app; refused without username and password.",
        "false",
    ),
    Var("RQ_DASHBOARD_USERNAME", "dashboard", "ops", "rq-dashboard basic-auth user.", ""),
    Var(
        "RQ_DASHBOARD_PASSWORD",
        "dashboard",
        "a-long-random-string",
        "rq-dashboard basic-auth password.",
        "",
        secret=True,
    ),
)
GROUPS = frozenset(v.group for v in VARIABLES)


@dataclass(frozen=True)
class SalesforceSettings:
    login_url: str
    client_id: str
    username: str
    private_key_path: str
    audience: str
    api_version: str
    timeout: float
    connect_timeout: float

    @property
    def token_url(self) -> str:
        return self.login_url.rstrip("/") + "/services/oauth2/token"


@dataclass(frozen=True)
class EventSettings:
    enabled: bool
    channel: str
    replay: str  # "LATEST" or "ALL"
    transport: str = "cometd"  # or "pubsub"
    pubsub_endpoint: str = "api.pubsub.salesforce.com:7443"
    pubsub_stall_timeout: float = 330.0


@dataclass(frozen=True)
class WhmcsSettings:
    api_url: str
    identifier: str
    secret: str = field(repr=False)
    access_key: str = field(repr=False)
    default_gateway: str
    read_timeout: float
    write_timeout: float
    connect_timeout: float


@dataclass(frozen=True)
class DashboardSettings:
    enabled: bool = False
    username: str = ""
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class Settings:
    app_env: str
    log_level: str
    redis_url: str = field(repr=False)
    database_url: str = field(repr=False)
    queue_name: str
    job_timeout: int
    order_lock_ttl: int
    connect_timeout: float
    pricebook_id: str
    account_client_field: str
    salesforce: SalesforceSettings
    events: EventSettings
    whmcs: WhmcsSettings
    warnings: tuple[str, ...] = ()
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)

    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line, an error field or a reply."""
        values = (
            self.whmcs.secret,
            self.whmcs.access_key,
            self.whmcs.identifier,
            self.dashboard.password,
        )
        return tuple(v for v in values if v) + _url_passwords(self.redis_url, self.database_url)


def load_settings(environ: Mapping[str, str], needs: Iterable[str] = ()) -> Settings:
    """Parse the environment; raise ConfigError naming every bad variable of the needed groups."""
    needed = {"core", *needs}
    unknown = needed - GROUPS
    if unknown:
        raise ValueError(f"unknown settings groups: {sorted(unknown)}")
    reader = _Reader(environ, needed)
    settings = _build(reader)
    if reader.problems:
        raise ConfigError(reader.problems)
    return settings


def load_from_environment(needs: Iterable[str] = ()) -> Settings:
    """`load_settings(os.environ, needs)` for callers that report a ConfigError themselves
    (`provisioner doctor`), instead of exiting like `shared.startup.start`."""
    return load_settings(os.environ, needs)


def describe(var: Var) -> str:
    """How to fix a variable: its meaning and a good value."""
    return f"{var.doc} Example: {var.name}={var.example}"


_BY_NAME = {v.name: v for v in VARIABLES}


class _Reader:
    """Collects problems instead of raising, so one run reports all of them."""

    def __init__(self, environ: Mapping[str, str], needed: set[str]) -> None:
        self.environ = environ
        self.needed = needed
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def raw(self, name: str) -> str:
        var = _BY_NAME[name]
        value = self.environ.get(name, "").strip()
        if value:
            return value
        if var.default is not None:
            return var.default
        if var.group in self.needed:
            self.problems.append(f"{name} is not set. {describe(var)}")
        return ""

    def parse(self, name: str, convert: Callable[[str], Any], fallback: Any) -> Any:
        value = self.raw(name)
        if not value:
            return fallback
        try:
            return convert(value)
        except ValueError as exc:
            if _BY_NAME[name].group in self.needed:
                var = _BY_NAME[name]
                self.problems.append(f"{name}={value!r} is invalid: {exc}. {describe(var)}")
            return fallback

    def check(self, name: str, ok: bool, why: str) -> None:
        if not ok and _BY_NAME[name].group in self.needed:
            var = _BY_NAME[name]
            self.problems.append(f"{name} {why}. {describe(var)}")


def _build(r: _Reader) -> Settings:
    return Settings(
        app_env=r.raw("APP_ENV"),
        log_level=r.parse("LOG_LEVEL", _log_level, "INFO"),
        redis_url=r.parse("REDIS_URL", _url(("redis", "rediss", "unix", "valkey")), ""),
        database_url=r.parse("DATABASE_URL", _database_url, ""),
        queue_name=r.raw("PROVISION_QUEUE"),
        job_timeout=r.parse("JOB_TIMEOUT", _positive_int, 600),
        order_lock_ttl=r.parse("ORDER_LOCK_TTL", _positive_int, 30),
        connect_timeout=r.parse("HTTP_CONNECT_TIMEOUT", _positive_float, 5.0),
        pricebook_id=r.raw("PORTAL_PRICEBOOK_ID"),
        account_client_field=r.parse("SF_ACCOUNT_CLIENT_FIELD", _field_name, "WHMCS_Client_ID__c"),
        salesforce=_salesforce(r),
        events=_events(r),
        whmcs=_whmcs(r),
        warnings=tuple(r.warnings),
        dashboard=DashboardSettings(
            enabled=r.parse("RQ_DASHBOARD_ENABLED", _bool, False),
            username=r.raw("RQ_DASHBOARD_USERNAME"),
            password=r.raw("RQ_DASHBOARD_PASSWORD"),
        ),
    )


def _salesforce(r: _Reader) -> SalesforceSettings:
    login_url = r.parse("SF_LOGIN_URL", _url(("https",)), "")
    key_path = r.raw("SF_PRIVATE_KEY_PATH")
    if key_path and "salesforce" in r.needed:
        _check_private_key(r, key_path)
    audience = r.raw("SF_AUDIENCE") or _origin(login_url)
    return SalesforceSettings(
        login_url=login_url,
        client_id=r.raw("SF_CLIENT_ID"),
        username=r.raw("SF_USERNAME"),
        private_key_path=key_path,
        audience=audience,
        api_version=r.parse("SF_API_VERSION", _api_version, "59.0"),
        timeout=r.parse("SF_TIMEOUT", _positive_float, 30.0),
        connect_timeout=r.parse("HTTP_CONNECT_TIMEOUT", _positive_float, 5.0),
    )


def _events(r: _Reader) -> EventSettings:
    channel = r.raw("SF_PROVISION_EVENT_CHANNEL")
    r.check(
        "SF_PROVISION_EVENT_CHANNEL",
        channel.startswith("/event/"),
        "must name a platform event channel starting with /event/",
    )
    return EventSettings(
        enabled=r.parse("SF_EVENTS_ENABLED", _bool, True),
        channel=channel,
        replay=r.parse("SF_EVENTS_REPLAY", _replay, "LATEST"),
        transport=r.parse("SF_EVENTS_TRANSPORT", _transport, "cometd"),
        pubsub_endpoint=r.parse("SF_PUBSUB_ENDPOINT", _host_port, "api.pubsub.salesforce.com:7443"),
        pubsub_stall_timeout=r.parse("SF_PUBSUB_STALL_TIMEOUT", _positive_float, 330.0),
    )


def _whmcs(r: _Reader) -> WhmcsSettings:
    return WhmcsSettings(
        api_url=r.parse("WHMCS_API_URL", _url(("https", "http")), ""),
        identifier=r.raw("WHMCS_API_IDENTIFIER"),
        secret=r.raw("WHMCS_API_SECRET"),
        access_key=r.raw("WHMCS_API_ACCESS_KEY"),
        default_gateway=r.raw("WHMCS_DEFAULT_GATEWAY"),
        read_timeout=r.parse("WHMCS_READ_TIMEOUT", _positive_float, 15.0),
        write_timeout=r.parse("WHMCS_WRITE_TIMEOUT", _positive_float, 60.0),
        connect_timeout=r.parse("HTTP_CONNECT_TIMEOUT", _positive_float, 5.0),
    )


def _check_private_key(r: _Reader, path: str) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        with open(path, "rb") as fh:
            data = fh.read()
        mode = os.stat(path).st_mode
    except OSError as exc:
        r.check("SF_PRIVATE_KEY_PATH", False, f"cannot be read ({exc.strerror}: {path})")
        return
    try:
        load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        r.check(
            "SF_PRIVATE_KEY_PATH", False, f"does not hold an unencrypted PEM private key ({path})"
        )
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        r.warnings.append(
            f"SF_PRIVATE_KEY_PATH {path} is readable by group or others "
            f"(mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def convert(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            raise ValueError(f"expected a {'/'.join(schemes)} URL")
        return value

    return convert


def _database_url(value: str) -> str:
    scheme = urlsplit(value).scheme
    if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
        raise ValueError("expected a sqlite:/// or postgresql+psycopg:// URL")
    return value


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.netloc else ""


def _url_passwords(*urls: str) -> tuple[str, ...]:
    found = []
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            found.append(password)
    return tuple(found)


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _replay(value: str) -> str:
    upper = value.upper()
    if upper not in ("LATEST", "ALL"):
        raise ValueError("expected LATEST or ALL")
    return upper


def _transport(value: str) -> str:
    lowered = value.lower()
    if lowered not in ("cometd", "pubsub"):
        raise ValueError("expected cometd or pubsub")
    return lowered


def _host_port(value: str) -> str:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in value:
        raise ValueError("expected host:port")
    return value


def _log_level(value: str) -> str:
    upper = value.upper()
    if upper not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return upper


def _api_version(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("expected a number like 59.0 (no leading v)") from None
    if number < 37.0 or "." not in value:
        raise ValueError("expected 37.0 or later, written like 59.0")
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be greater than 0")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError("must be greater than 0")
    return number


def _field_name(value: str) -> str:
    if not value.replace("_", "").isalnum():
        raise ValueError("expected a Salesforce field API name")
    return value


def markdown_table() -> str:
    """The README's configuration table, generated from VARIABLES (a test keeps them in sync)."""
    used_by = {
        "core": "all",
        "salesforce": "subscriber, worker",
        "events": "subscriber",
        "orders": "worker",
        "whmcs": "worker",
        "dashboard": "health",
    }
    rows = ["| variable | used by | default | meaning |", "|---|---|---|---|"]
    for var in VARIABLES:
        if var.default is None:
            default = "**required**"
        elif var.default == "":
            default = "(empty)"
        else:
            default = f"`{var.default}`"
        rows.append(
            f"| `{var.name}` | {used_by.get(var.group, var.group)} | {default} | {var.doc} |"
        )
    return "\n".join(rows)
