"""Child processes of a command, each in its own session, all stopped together and for sure.

A child gets its own session so a terminal's Ctrl-C reaches only the command, which then stops
the children in order. Stopping one sends SIGTERM to its process group, waits, then SIGKILLs the
group and every process it forked, including RQ work horses, which sit in groups of their own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

# What a child inherits from the caller: enough to run Python, never the caller's own settings.
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "TZ")
STOP_GRACE = 10.0


def child_environment(parent: Mapping[str, str], settings: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child: the caller's basics plus exactly the settings given."""
    base = {k: parent[k] for k in BASE_ENV_KEYS if k in parent}
    return {**base, "PYTHONUNBUFFERED": "1", **settings}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Child:
    """One started process; its output is appended to `log_path`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        tier: int,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.tier = tier
        self.log_path = log_path
        self._family: set[int] = set()
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in finish()
        self.proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        """Ask the process group to stop (an RQ worker finishes the job in hand first)."""
        # Noted before the signal: once the parent exits, its orphans no longer point to it.
        self._family = descendants(self.pid)
        if self.alive():
            signal_group(self.pid, signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Wait until `deadline` (monotonic), then kill whatever of the family is left."""
        family = set(self._family)
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            family |= descendants(self.pid)
            signal_group(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        for pid in family:
            signal_group(pid, signal.SIGKILL)
        self._log.close()


class Supervisor:
    """Starts children and stops them all: highest tier first, each tier in parallel."""

    def __init__(
        self, environ: Mapping[str, str], default_log: Path, pid_file: Path | None = None
    ) -> None:
        self.environ = environ
        self.default_log = default_log
        self.pid_file = pid_file
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        settings: Mapping[str, str],
        *,
        log_path: Path | None = None,
        tier: int = 1,
    ) -> Child:
        env = child_environment(self.environ, settings)
        child = Child(name, argv, env, log_path or self.default_log, tier)
        self.children.append(child)
        self._write_pid_file()
        return child

    def dead(self) -> list[Child]:
        return [child for child in self.children if not child.alive()]

    def stop_all(self, grace: float = STOP_GRACE) -> list[Child]:
        """Stop every child; returns them in the order they were stopped."""
        stopped: list[Child] = []
        for tier in sorted({c.tier for c in self.children}, reverse=True):
            batch = [c for c in self.children if c.tier == tier]
            stop_together(batch, grace)
            stopped.extend(batch)
        self.children.clear()
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        return stopped

    def _write_pid_file(self) -> None:
        if self.pid_file is not None:
            entries = [{"pid": c.pid, "argv": c.argv} for c in self.children]
            self.pid_file.write_text(json.dumps(entries))


def kill_leftovers(pid_file: Path) -> list[int]:
    """Kill what a supervisor that died hard (kill -9) left running, as recorded in its pid file.

    Only processes still running the very command recorded are touched, so a reused pid is safe.
    """
    try:
        entries = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return []
    killed = []
    for entry in entries:
        pid = int(entry["pid"])
        if running_command(pid) == entry["argv"]:
            for member in descendants(pid) | {pid}:
                signal_group(member, signal.SIGKILL)
            killed.append(pid)
    pid_file.unlink(missing_ok=True)
    return killed


def running_command(pid: int) -> list[str] | None:
    """The argv of a living process (Linux /proc); None when gone or unknown."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1] or None


def stop_together(children: Iterable[Child], grace: float) -> None:
    batch = list(children)
    for child in batch:
        child.terminate()
    deadline = time.monotonic() + grace
    for child in batch:
        child.finish(deadline)


def signal_group(pid: int, signum: int) -> None:
    """Signal the process group led by `pid` (or `pid` alone if it leads none); gone is fine."""
    try:
        os.killpg(pid, signum)
        return
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(pid: int) -> set[int]:
    """Every living process below `pid` (children, grandchildren, ...)."""
    return descendants_in(pid, parent_pairs())


def descendants_in(root: int, pairs: Iterable[tuple[int, int]]) -> set[int]:
    """Pure part of `descendants`: walk (pid, ppid) pairs down from `root`."""
    children: dict[int, list[int]] = {}
    for pid, ppid in pairs:
        children.setdefault(ppid, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def parent_pairs() -> list[tuple[int, int]]:
    """(pid, ppid) of every process: /proc on Linux, `ps` elsewhere."""
    proc = Path("/proc")
    if proc.is_dir():
        return [pair for entry in proc.iterdir() if (pair := _proc_pair(entry)) is not None]
    try:
        out = subprocess.run(
            ["ps", "-A", "-o", "pid=", "-o", "ppid="],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_ps(out)


def parse_ps(text: str) -> list[tuple[int, int]]:
    pairs = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            pairs.append((int(fields[0]), int(fields[1])))
    return pairs


def parse_proc_stat(text: str) -> tuple[int, int] | None:
    """(pid, ppid) from a /proc/<pid>/stat line; the command name may hold spaces and parens."""
    head, sep, tail = text.rpartition(")")
    fields = tail.split()
    if not sep or len(fields) < 2 or not fields[1].lstrip("-").isdigit():
        return None
    return int(head.split("(", 1)[0]), int(fields[1])


def _proc_pair(entry: Path) -> tuple[int, int] | None:
    if not entry.name.isdigit():
        return None
    try:
        return parse_proc_stat((entry / "stat").read_text())
    except OSError:
        return None
