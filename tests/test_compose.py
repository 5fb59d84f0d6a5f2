"""compose.yaml cannot run here (no Docker engine), so these tests keep it honest."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from provisioner.cli import COMMANDS
from shared.config import VARIABLES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = ("migrate", "subscriber", "worker", "health")
KNOWN = {v.name for v in VARIABLES} | {"REQUESTS_CA_BUNDLE", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"}
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
    dash = SERVICES["rq-dashboard"]
    assert "--json" in dash["command"]
    assert dash["environment"]["RQ_DASHBOARD_USERNAME"].startswith("${")
    assert dash["environment"]["RQ_DASHBOARD_PASSWORD"].startswith("${")
    assert all(p.startswith("127.0.0.1:") for p in dash["ports"])


def test_sandbox_is_only_in_its_profile():
    assert SERVICES["sandbox"]["profiles"] == ["sandbox"]
    assert all("profiles" not in s for n, s in SERVICES.items() if n != "sandbox")


def test_dockerfile_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.M)
