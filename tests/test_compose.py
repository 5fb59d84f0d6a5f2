"""compose.yaml cannot run here (no Docker engine), so these tests keep it honest."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from healthcheck.app import PROBE_TIMEOUT
from provisioner.cli import COMMANDS
from shared.config import VARIABLES, Settings, load_settings
from shared.connections import REDIS_SOCKET_TIMEOUT
from worker import ordering

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("migrate", "subscriber", "worker", "health")
# read by libraries, not by our settings: requests (CA bundle), libpq (PGPASSWORD) and gRPC (roots)
LIBRARY_VARIABLES = {"REQUESTS_CA_BUNDLE", "PGPASSWORD", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"}
KNOWN = {v.name for v in VARIABLES} | LIBRARY_VARIABLES
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _resolves(command: list[str]) -> bool:
    if command[:2] == ["python", "-m"]:
        return importlib.util.find_spec(f"{command[2]}.__main__") is not None
    if command[0] == "provisioner":
        return "provisioner" in SCRIPTS and command[1] in COMMANDS
    if command[0] == "gunicorn":
        module, _, call = command[-1].partition(":")
        return callable(getattr(importlib.import_module(module), call.removesuffix("()")))
    if command[0] == "rq-dashboard":
        points = importlib.metadata.entry_points(group="console_scripts")
        return any(p.name == "rq-dashboard" for p in points)
    return False


OUR_IMAGE = [n for n, s in SERVICES.items() if s.get("image", "").startswith("sf-whmcs")]


def test_our_image_runs_every_process():
    assert set(OUR_IMAGE) >= {*APP_SERVICES, "rq-dashboard", "sandbox"}


@pytest.mark.parametrize("name", OUR_IMAGE)
def test_every_command_resolves_to_an_entry_point(name):
    command = SERVICES[name]["command"]
    assert _resolves(command), f"{name}: {command} does not resolve"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_set_only_variables_the_settings_know(name):
    env = SERVICES[name]["environment"]
    unknown = set(env) - KNOWN
    assert not unknown, f"{name} sets variables no setting reads: {sorted(unknown)}"


def test_no_default_passwords_or_secrets():
    text = (ROOT / "compose.yaml").read_text()
    for secret in ("PASSWORD", "SECRET", "IDENTIFIER"):
        for match in re.finditer(r"\$\{(\w*" + secret + r"\w*)([^}]*)\}", text):
            assert match.group(2).startswith(":?"), f"{match.group(0)} has a default"


def test_redis_persists_and_worker_scales():
    assert "--appendonly yes" in " ".join(SERVICES["redis"]["command"])
    assert any(v.endswith(":/data") for v in SERVICES["redis"]["volumes"])
    assert SERVICES["worker"]["deploy"]["replicas"] == 2
    assert SERVICES["subscriber"]["deploy"]["replicas"] == 1


def test_private_key_is_mounted_read_only_at_the_runbook_path():
    for name in ("subscriber", "worker"):
        mounts = SERVICES[name]["volumes"]
        assert any(m.endswith(":/app/secrets/sf-private.key:ro") for m in mounts)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^(COPY|ADD)\b.*(key|secret|\.pem)", dockerfile, re.M | re.I)


def test_dashboard_requires_auth_and_json_mode():
    """Our own app serves it (healthcheck/dashboard.py: JSON jobs, no delete, basic auth), so it
    connects with the settings every process uses, REDIS_PASSWORD included."""
    dash = SERVICES["rq-dashboard"]
    assert dash["command"][-1].startswith("healthcheck.")
    assert not set(dash["environment"]) - KNOWN
    assert dash["environment"]["RQ_DASHBOARD_USERNAME"].startswith("${")
    assert dash["environment"]["RQ_DASHBOARD_PASSWORD"].startswith("${")
    assert all(p.startswith("127.0.0.1:") for p in dash["ports"])


def test_sandbox_is_only_in_its_profile():
    assert SERVICES["sandbox"]["profiles"] == ["sandbox"]
    assert all("profiles" not in s for n, s in SERVICES.items() if n != "sandbox")


def test_dockerfile_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.M)


# --- issue 16: builds, credentials, timeouts, the Compose Specification ---------------------------


@pytest.mark.parametrize("name", OUR_IMAGE)
def test_every_service_of_our_image_builds_it_or_never_pulls_it(name):
    """sf-whmcs-provisioner is in no registry: a pull would fail the first `docker compose up`."""
    service = SERVICES[name]
    assert "build" in service or service.get("pull_policy") in ("never", "build")


# A variable interpolated into the user-info part of a URL: compose cannot percent-encode it, so
# a password holding @, :, / or % would silently become another host, port or path.
CREDENTIAL_IN_URL = re.compile(r"\w+://[^\s/@\"']*\$\{[^}]+\}[^\s/@\"']*@")


def test_no_credential_is_interpolated_into_a_url():
    found = CREDENTIAL_IN_URL.findall((ROOT / "compose.yaml").read_text())
    assert not found, f"pass these apart from the URL (REDIS_PASSWORD, PGPASSWORD): {found}"


def test_the_credential_rule_catches_what_it_is_for():
    assert CREDENTIAL_IN_URL.search("redis://:${REDIS_PASSWORD:?x}@redis:6379/0")
    assert CREDENTIAL_IN_URL.search("postgresql+psycopg://app:${PW}@postgres/app")
    assert not CREDENTIAL_IN_URL.search("redis://redis:6379/${DB:-0}")


def _compose_value(value: str) -> str:
    """`${NAME:-default}` as compose resolves it without a .env entry; the rest verbatim."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def compose_settings(name: str) -> Settings:
    env = {k: _compose_value(v) for k, v in SERVICES[name]["environment"].items()}
    return load_settings({k: v for k, v in env.items() if "${" not in v})


# The calls of one job on its longest path (worker/orchestrator.py, worker/steps.py), each able
# to take its full connect + read timeout before it fails:
SF_CALLS = (
    1  # JWT token mint (the cached token has expired)
    + 2  # read the order: the query, one more page of its lines
    + 1  # status Activating
    + 2  # status Activated, and when that times out, the failure update
    + 2  # one 401 on the way: a fresh token and the call again
)
WHMCS_READS = 4  # GetProducts, GetPayMethods, GetClientsDetails, GetOrders after AcceptOrder
WHMCS_WRITES = 2  # AddOrder, AcceptOrder
REDIS_CALLS = 6  # lease take, held checks, release, in-flight record, token cache read and write


def worst_case_job_seconds(settings: Settings) -> float:
    sf, whmcs = settings.salesforce, settings.whmcs
    # Looking for an earlier order before ordering again.
    lookup_pages = ordering.LOOKUP_MAX_ORDERS // ordering.LOOKUP_PAGE
    return (
        SF_CALLS * (sf.connect_timeout + sf.timeout)
        + (WHMCS_READS + lookup_pages) * (whmcs.connect_timeout + whmcs.read_timeout)
        + WHMCS_WRITES * (whmcs.connect_timeout + whmcs.write_timeout)
        + REDIS_CALLS * REDIS_SOCKET_TIMEOUT
    )


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


@pytest.mark.parametrize("name", ["worker", "subscriber"])
def test_job_timeout_is_above_one_jobs_worst_case(name):
    """JOB_TIMEOUT is RQ's backstop: below the calls' own timeouts, it would kill a job that was
    about to fail cleanly (or succeed) and leave its outcome to the reaper."""
    settings = compose_settings(name)  # the subscriber enqueues with it; the worker runs it
    assert settings.job_timeout > worst_case_job_seconds(settings)


def test_the_default_job_timeout_is_above_one_jobs_worst_case_too():
    settings = load_settings({})
    assert settings.job_timeout > worst_case_job_seconds(settings)


def test_workers_outlive_their_job_on_shutdown():
    settings = compose_settings("worker")
    assert _seconds(SERVICES["worker"]["stop_grace_period"]) > settings.job_timeout


def test_health_answers_within_every_timeout_around_it():
    """Probes give up after PROBE_TIMEOUT; gunicorn and the container check wait longer."""
    for name in ("health", "rq-dashboard"):
        command = SERVICES[name]["command"]
        assert float(command[command.index("--timeout") + 1]) > PROBE_TIMEOUT * 2
    assert _seconds(SERVICES["health"]["healthcheck"]["timeout"]) > PROBE_TIMEOUT * 2


SCHEMA = ROOT / ".venv" / "compose-spec" / "node_modules" / "dclint" / "schemas"


def test_compose_file_is_valid_against_the_compose_specification():
    """The Compose Specification's JSON schema, as the npm package dclint ships it (`make venv`
    installs it; nothing is fetched at test time)."""
    path = SCHEMA / "compose.schema.json"
    assert path.exists(), f"{path} is missing: run `make venv`"
    schema = json.loads(path.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(COMPOSE), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def test_the_schema_check_catches_a_wrong_file():
    schema = json.loads((SCHEMA / "compose.schema.json").read_text())
    wrong = {"services": {"x": {"image": "a", "buld": ".", "ports": "80"}}}  # typo, not a list
    assert len(list(jsonschema.Draft7Validator(schema).iter_errors(wrong))) >= 2
