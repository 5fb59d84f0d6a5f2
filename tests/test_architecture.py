"""The rules of the layout: dependency direction, the job path, TLS, the README's table."""

from __future__ import annotations

import ast
import functools
import importlib
import itertools
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


# --- import circles, name clashes and prefix families, computed from the tree ------------------
# (issue 13 removed the last of each; these keep them out)

# Same-role names, allowed in many folders: a package's entry points and fixtures, and the parts
# alike packages each have (sandbox/salesforce/ and sandbox/whmcs/ each an emulator.py; the
# doctor's and the demo's command.py).
SAME_ROLE = {
    *("__init__.py", "__main__.py", "main.py", "app.py", "conftest.py"),
    *("emulator.py", "command.py"),
}
LARGE_FOLDER = 8  # more .py files than this, and a family of names is a package to make
FAMILY = 3  # modules sharing a first word (doctor, doctor_checks, doctor_order)
ABBREVIATION_FAMILY = 4  # modules sharing only two leading letters (sfrules, sfstore, ...)


def project_packages() -> list[str]:
    return sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))


@functools.cache
def module_files() -> dict[str, Path]:
    """Every module of the project's packages by dotted name (a package by its own name)."""
    found = {}
    for package in project_packages():
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(node: ast.AST, here: str, is_package: bool, modules: dict) -> set[str]:
    """The project modules one import statement names: `from a import b` is a.b if a module."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = here.split(".")[: len(here.split(".")) - node.level + is_package]
            base = ".".join([*anchor, base] if base else anchor)
        names = [f"{base}.{alias.name}" for alias in node.names] + [base]
    else:
        return set()
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and modules[name].name != "__init__.py":  # the packages' __init__ stay empty
            found.add(name)
    return found


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere: at the top, in functions, for types."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        graph[name] = set().union(
            *(
                _imported(n, name, is_package, modules)
                for n in ast.walk(ast.parse(path.read_text()))
            )
        ) - {name}
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: the groups of modules that reach one another."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            target = next(edges, None)
            if target is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    groups.append(group)
            elif target not in index:
                index[target] = low[target] = len(index)
                stack.append(target)
                on_stack.add(target)
                work.append((target, iter(sorted(graph[target]))))
            elif target in on_stack:
                low[node] = min(low[node], index[target])
    return [group for group in groups if len(group) > 1]


def _path(name: str) -> str:
    return str(module_files()[name].relative_to(ROOT))


def _cycle(group: list[str], graph: dict[str, set[str]]) -> str:
    """One loop through the group, as `a.py -> b.py -> a.py`, for the failure message."""
    start, members = min(group), set(group)
    trail, seen = [start], {start}
    while True:
        step = min(graph[trail[-1]] & members, key=lambda m: (m in seen and m != start, m))
        if step == start or step in seen:
            trail.append(step)
            return " -> ".join(_path(m) for m in trail)
        trail.append(step)
        seen.add(step)


def circles() -> dict[tuple[str, ...], str]:
    graph = import_graph()
    return {
        tuple(sorted(_path(m) for m in group)): _cycle(group, graph)
        for group in _strongly_connected(graph)
    }


def _stem_key(name: str) -> str:
    """mapping.py and mappings.py are one name."""
    stem = name.removesuffix(".py")
    return stem.removesuffix("s") if len(stem) > 3 else stem


def clashes() -> set[tuple[str, str]]:
    by_name: dict[str, list[str]] = {}
    for path in module_files().values():
        if path.name not in SAME_ROLE and not path.name.startswith("test_"):
            by_name.setdefault(_stem_key(path.name), []).append(str(path.relative_to(ROOT)))
    return {pair for paths in by_name.values() for pair in itertools.combinations(sorted(paths), 2)}


def large_folders() -> dict[str, list[str]]:
    """Folders with more than LARGE_FOLDER .py files (test files aside): their module names."""
    folders: dict[str, list[str]] = {}
    for path in module_files().values():
        if not path.name.startswith("test_"):
            folders.setdefault(str(path.parent.relative_to(ROOT)), []).append(path.stem)
    return {f: sorted(names) for f, names in folders.items() if len(names) > LARGE_FOLDER}


def families() -> dict[tuple[str, str], list[str]]:
    found = {}
    for folder, names in large_folders().items():
        names = [n for n in names if not n.startswith("__")]
        groups: dict[tuple[str, int], list[str]] = {}
        for name in names:
            groups.setdefault((name.split("_")[0], FAMILY), []).append(name)
            if "_" not in name:
                groups.setdefault((name[:2], ABBREVIATION_FAMILY), []).append(name)
        for (prefix, least), members in groups.items():
            if len(members) >= least and (folder, prefix) not in found:
                found[(folder, prefix)] = members
    return found


def test_no_import_circle():
    found = circles()
    assert not found, "import circles:\n" + "\n".join(found.values())


def test_no_module_name_clash():
    assert clashes() == set()


def test_large_folders_hold_no_family_of_names():
    print("folders with more than eight modules:")
    for folder, names in large_folders().items():
        print(f"  {folder}/ ({len(names)}): {', '.join(names)}")
    found = families()
    assert not found, f"make these packages: {found}"
