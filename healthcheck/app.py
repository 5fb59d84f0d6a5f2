"""The health app: `create_app()` serves /health, /metrics and, if enabled, rq-dashboard at /rq."""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, current_app, jsonify

from healthcheck import dashboard, metrics, probes
from healthcheck.dependencies import Dependencies
from shared.startup import start

# Each probe's budget; probes run side by side, so /health answers within about this long.
PROBE_TIMEOUT = 1.5
DISTRIBUTION = "sf-whmcs-provisioner"


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """App factory (also gunicorn's `healthcheck.app:create_app()`).

    `test_config` may carry `SETTINGS` (a ready Settings) and `PROBE_TIMEOUT`; without SETTINGS
    the environment is read, needing neither Salesforce nor WHMCS credentials.
    """
    app = Flask(__name__)
    app.config.from_mapping(PROBE_TIMEOUT=PROBE_TIMEOUT, JSON_SORT_KEYS=False)
    if test_config is not None:
        app.config.from_mapping(test_config)
    settings = app.config.get("SETTINGS") or start("healthcheck", needs=("dashboard",))
    deps = Dependencies.build(settings, float(app.config["PROBE_TIMEOUT"]))
    app.extensions["healthcheck"] = deps
    app.add_url_rule("/health", "health", health)
    metrics.install(app, deps)
    dashboard.mount(app, settings)
    return app


def health() -> Response:
    deps: Dependencies = current_app.extensions["healthcheck"]
    body, status = report(deps, time.time())
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response


def report(deps: Dependencies, now: float) -> tuple[dict[str, Any], int]:
    results = deps.probe(now)
    status, code = probes.overall(results["database"], results["redis"])
    warnings = probes.warnings(results["database"], results["integrations"])
    body = {
        # degraded: the stores answer (200) but the pipeline is not all there; see warnings.
        "status": "degraded" if code == 200 and warnings else status,
        "environment": deps.settings.app_env,
        "version": version(),
        "checked_at": now,
        "database": {"backend": deps.engine.dialect.name, **results["database"].as_dict()},
        "redis": results["redis"].as_dict(),
        "integrations": {"redis": results["integrations"].as_dict()},
        "warnings": warnings,
    }
    return body, code


def version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
