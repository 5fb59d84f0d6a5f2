"""The only reader of the environment: one table of variables, parsed into frozen settings.

Each process asks for the groups it needs (`load_settings(os.environ, needs={"salesforce"})`);
every missing or invalid variable of those groups is reported at once in one ConfigError.
The README's configuration table is generated from VARIABLES and a test holds the two in sync.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

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
        "Queue, replay id, locks, token cache. rediss:// for TLS; an ACL user and password go in "
        "the URL, percent-encoded (redis://user:p%40ss@host:6379/0). With REDIS_SENTINELS its "
        "host is ignored: the scheme, credentials and database number apply to the primary.",
        "redis://127.0.0.1:6379/0",
        secret=True,
    ),
    Var(
        "REDIS_PASSWORD",
        "core",
        "s3cret/with:any@chars",
        "Redis password kept out of REDIS_URL, so it needs no escaping; "
        "empty: the URL's own, if any.",
        "",
    ),
    Var(
        "REDIS_CA_BUNDLE",
        "core",
        "/etc/ssl/private-ca.pem",
        "PEM CA file that signs Redis's TLS certificate (rediss://); empty: the system store.",
        "",
    ),
    Var(
        "REDIS_SENTINELS",
        "core",
        "10.0.0.5:26379,10.0.0.6:26379,10.0.0.7:26379",
        "Sentinel host:port list; when set, they name the primary (see REDIS_SENTINEL_MASTER).",
        "",
    ),
    Var(
        "REDIS_SENTINEL_MASTER",
        "core",
        "provisioner",
        "Sentinel's name of the primary (required with REDIS_SENTINELS).",
        "",
    ),
    Var(
        "REDIS_SENTINEL_PASSWORD",
        "core",
        "sentinel-secret",
        "Password of the Sentinels themselves (their requirepass), if they have one.",
        "",
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
        "900",
        "Seconds before RQ kills a fulfilment job (a backstop, above the calls' own timeouts).",
        "900",
    ),
    Var(
        "ORDER_LOCK_TTL",
        "core",
        "30",
        "Seconds a dead worker's order lease lasts before the reaper fails the order.",
        "30",
    ),
    Var(
        "RECONCILE_INTERVAL",
        "core",
        "60",
        "Seconds between the reconciler's sweeps (one SOQL query each, whole system).",
        "60",
    ),
    Var(
        "RECONCILE_AFTER",
        "core",
        "300",
        "Seconds an order may sit Activating before the reconciler gives it a job.",
        "300",
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
    Var(
        "SF_LOGIN_BACKOFF",
        "salesforce",
        "60",
        "While JWT logins fail, seconds between a process's login attempts (per-user login cap).",
        "60",
    ),
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
    login_backoff: float = 60.0

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
class RedisSettings:
    """Where Redis is and how to reach it: what shared.connections.redis_client builds from."""

    url: str = field(repr=False)  # credentials, database, TLS (rediss://) and, alone, the host
    ca_bundle: str = ""  # "" with rediss://: the system store
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = ""
    sentinel_password: str = field(default="", repr=False)


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
    reconcile_interval: float = 60.0
    reconcile_after: float = 300.0
    # CA bundle and Sentinels; `redis` joins them to redis_url (which stays the one URL field).
    redis_options: RedisSettings = field(default_factory=lambda: RedisSettings(""), repr=False)

    @property
    def redis(self) -> RedisSettings:
        """Everything shared.connections.redis_client needs to reach Redis."""
        return dataclasses.replace(self.redis_options, url=self.redis_url)

    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line, an error field or a reply."""
        values = (
            self.whmcs.secret,
            self.whmcs.access_key,
            self.whmcs.identifier,
            self.dashboard.password,
            self.redis.sentinel_password,
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
    redis = _redis(r)
    return Settings(
        app_env=r.raw("APP_ENV"),
        log_level=r.parse("LOG_LEVEL", _log_level, "INFO"),
        redis_url=redis.url,
        redis_options=redis,
        database_url=r.parse("DATABASE_URL", _database_url, ""),
        queue_name=r.raw("PROVISION_QUEUE"),
        job_timeout=r.parse("JOB_TIMEOUT", _positive_int, 900),
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
        reconcile_interval=r.parse("RECONCILE_INTERVAL", _positive_float, 60.0),
        reconcile_after=r.parse("RECONCILE_AFTER", _positive_float, 300.0),
    )


def _redis(r: _Reader) -> RedisSettings:
    url = with_password(
        r.parse("REDIS_URL", _url(("redis", "rediss", "unix", "valkey")), ""),
        r.raw("REDIS_PASSWORD"),
    )
    ca_bundle = r.raw("REDIS_CA_BUNDLE")
    if ca_bundle:
        r.check("REDIS_CA_BUNDLE", os.path.isfile(ca_bundle), f"names no file ({ca_bundle})")
    sentinels = r.parse("REDIS_SENTINELS", _host_ports, ())
    master = r.raw("REDIS_SENTINEL_MASTER")
    r.check("REDIS_SENTINEL_MASTER", bool(master) or not sentinels, "is required with sentinels")
    return RedisSettings(url, ca_bundle, sentinels, master, r.raw("REDIS_SENTINEL_PASSWORD"))


def _host_ports(value: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port` (an IPv6 host in brackets: `[::1]:26379`)."""
    found = []
    for item in (part.strip() for part in value.split(",")):
        host, _, port = item.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port items separated by commas, not {item!r}")
        found.append((host, int(port)))
    return tuple(found)


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
        login_backoff=r.parse("SF_LOGIN_BACKOFF", _positive_float, 60.0),
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


def with_password(url: str, password: str) -> str:
    """`url` carrying `password`, percent-encoded as redis-py decodes it (it replaces the
    URL's own); a compose file or a secret store can then hand the password over verbatim."""
    if not (url and password):
        return url
    parts = urlsplit(url)
    secret = quote(password, safe="")
    if parts.scheme == "unix":  # unix:///path?db=0&password=...
        return f"{url}{'&' if parts.query else '?'}password={secret}"
    user = quote(unquote(parts.username or ""), safe="")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{secret}@{host}"))


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
            # Both spellings: the URL holds it percent-encoded, a library error may show it decoded.
            found.extend(dict.fromkeys((password, unquote(password))))
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
