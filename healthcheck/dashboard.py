"""rq-dashboard at /rq inside the health app (or alone: `standalone_app()`), only when enabled,
never without basic auth, always on the project's Redis client.

rq-dashboard builds its own client from a URL (`redis+sentinel://` at best: no private CA, no ACL
user, no percent-decoding of the password), so it is handed ours instead: shared.connections, the
same TLS, ACL and Sentinel settings as every other process.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, redirect, request

from shared.config import DashboardSettings, RedisSettings, Settings
from shared.connections import redis_client
from shared.startup import start

log = logging.getLogger(__name__)

URL_PREFIX = "/rq"
BLUEPRINT = "rq_dashboard"
EXTENSION = "rq_dashboard_redis"


def refusal(dashboard: DashboardSettings) -> str | None:
    """Why the dashboard must not be mounted, or None when it may be."""
    if not dashboard.enabled:
        return "RQ_DASHBOARD_ENABLED is off"
    if not (dashboard.username and dashboard.password):
        return "RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD must both be set"
    return None


def mount(app: Flask, settings: Settings) -> bool:
    reason = refusal(settings.dashboard)
    if reason is not None:
        if settings.dashboard.enabled:
            log.error("rq-dashboard not mounted", extra={"reason": reason})
        return False
    # Imported here: the dashboard is an optional extra ("dashboard") of the distribution.
    import rq_dashboard
    from rq.serializers import JSONSerializer

    # Our jobs are JSON: without this the job page 500s and Requeue rewrites meta as a pickle.
    rq_dashboard.web.config.serializer = JSONSerializer
    # What the instance list shows; the client rq-dashboard builds from it is never used.
    app.config["RQ_DASHBOARD_REDIS_URL"] = display_url(settings.redis)
    # Requeue stays allowed (ops retry from here); deleting evidence does not.
    app.config["RQ_DASHBOARD_DISABLE_DELETE"] = True
    rq_dashboard.web.setup_rq_connection(app)
    app.extensions[EXTENSION] = app.redis_conn = redis_client(settings.redis)  # type: ignore[attr-defined]
    _keep_our_connection(rq_dashboard.blueprint)
    app.before_request(basic_auth(settings.dashboard.username, settings.dashboard.password))
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    log.info("rq-dashboard mounted", extra={"url_prefix": URL_PREFIX})
    return True


def standalone_app() -> Flask:
    """rq-dashboard alone (compose's `rq-dashboard` service, gunicorn's
    `healthcheck.dashboard:standalone_app()`): at /rq, with / sending there."""
    settings = start("rq-dashboard", needs=("dashboard",))
    dashboard = settings.dashboard
    if not dashboard.enabled:  # running this process is the request to enable it
        settings = dataclasses.replace(
            settings, dashboard=dataclasses.replace(dashboard, enabled=True)
        )
    app = Flask(__name__)
    if not mount(app, settings):
        raise SystemExit(f"rq-dashboard: {refusal(settings.dashboard)}")
    app.add_url_rule("/", "root", lambda: redirect(URL_PREFIX + "/"))
    return app


def display_url(where: RedisSettings) -> str:
    """The Redis location without credentials (rq-dashboard prints its URL on the page)."""
    parts = urlsplit(where.url)
    database = parts.path.strip("/") or "0"
    if where.sentinels:
        hosts = ",".join(f"{host}:{port}" for host, port in where.sentinels)
        return f"redis+sentinel://{hosts}/{where.sentinel_master}/{database}"
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/{database}"


def _keep_our_connection(blueprint: Any) -> None:
    """rq-dashboard's own before_request rebuilds a client from its URL on every page with an
    instance number; this one, registered after it, puts ours back (once per process)."""
    if getattr(blueprint, "_provisioner_connection", False):
        return
    blueprint._provisioner_connection = True

    @blueprint.before_request
    def use_ours() -> None:
        ours = current_app.extensions.get(EXTENSION)
        if ours is not None:
            current_app.redis_conn = ours  # type: ignore[attr-defined]


def basic_auth(username: str, password: str) -> Callable[[], Response | None]:
    """A before_request hook guarding the dashboard blueprint (embedding adds no auth itself)."""
    expected = (username.encode(), password.encode())

    def check() -> Response | None:
        if not _guarded(request.path, request.blueprint):
            return None
        auth = request.authorization
        given = (
            ((auth.username or "").encode(), (auth.password or "").encode()) if auth else (b"", b"")
        )
        # Both compared, constant time: no early exit that tells a valid username apart.
        user_ok = hmac.compare_digest(given[0], expected[0])
        password_ok = hmac.compare_digest(given[1], expected[1])
        if user_ok and password_ok:
            return None
        return Response(
            "authentication required\n",
            401,
            {"WWW-Authenticate": 'Basic realm="rq-dashboard"'},
            mimetype="text/plain",
        )

    return check


def _guarded(path: str, blueprint: str | None) -> bool:
    return blueprint == BLUEPRINT or path == URL_PREFIX or path.startswith(URL_PREFIX + "/")
