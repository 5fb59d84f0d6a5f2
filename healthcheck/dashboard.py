"""rq-dashboard at /rq inside the health app: only when enabled, never without basic auth."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from flask import Flask, Response, request

from shared.config import DashboardSettings, Settings

log = logging.getLogger(__name__)

URL_PREFIX = "/rq"
BLUEPRINT = "rq_dashboard"


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
    app.config["RQ_DASHBOARD_REDIS_URL"] = settings.redis_url
    # Requeue stays allowed (ops retry from here); deleting evidence does not.
    app.config["RQ_DASHBOARD_DISABLE_DELETE"] = True
    rq_dashboard.web.setup_rq_connection(app)
    app.before_request(basic_auth(settings.dashboard.username, settings.dashboard.password))
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=URL_PREFIX)
    log.info("rq-dashboard mounted", extra={"url_prefix": URL_PREFIX})
    return True


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
