"""The rules of the layout: dependency direction, the job path, TLS, the README's table."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from shared.config import markdown_table
from shared.queueing import JOB_PATH

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "subscriber", "worker", "healthcheck", "sandbox", "provisioner")


def imports_of(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_shared_imports_none_of_the_other_packages():
    assert not imports_of("shared") & (set(PACKAGES) - {"shared"})


def test_subscriber_never_imports_worker_code():
    assert "worker" not in imports_of("subscriber")


def test_the_job_path_imports():
    module, _, name = JOB_PATH.rpartition(".")
    assert callable(getattr(importlib.import_module(module), name))


def test_tls_verification_is_never_disabled():
    pattern = re.compile(r"verify\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False")
    offenders = [
        str(path.relative_to(ROOT))
        for package in (*PACKAGES, "bench")
        if (ROOT / package).exists()
        for path in (ROOT / package).rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []


def test_readme_configuration_table_matches_the_settings():
    assert markdown_table() in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("package", PACKAGES)
def test_init_files_stay_empty(package):
    assert (ROOT / package / "__init__.py").read_text().strip() == ""
