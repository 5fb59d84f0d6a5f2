"""The kit's supervisor: child processes, each in its own session, stopped together and for sure.

A child gets its own session so a terminal's Ctrl-C reaches only the command, which then stops
the children in order. Stopping one sends SIGTERM to its process group, waits, then SIGKILLs the
group and every process it forked. kill -9 reaches the whole family too: RQ's work horse calls
setpgrp, so killing the worker's process group alone would leave the horse working. On request
the supervisor restarts whatever dies (compose's restart policy), noting each death.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# What a child inherits from the caller: enough to run Python, never the caller's own settings.
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "TZ")
STOP_GRACE = 10.0
RESTART_DELAY = 0.5  # seconds before a dead child is started again
WATCH_EVERY = 0.2

Argv = Sequence[str] | Callable[[str], Sequence[str]]  # a callable gets the generation's name


def child_environment(parent: Mapping[str, str], settings: Mapping[str, str]) -> dict[str, str]:
    """The environment of a child: the caller's basics plus exactly the settings given."""
    base = {k: parent[k] for k in BASE_ENV_KEYS if k in parent}
    return {**base, "PYTHONUNBUFFERED": "1", **settings}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass(frozen=True)
class Respawn:
    name: str  # the generation that died
    at: float  # on the supervisor's clock
    cause: str  # "kill -9" or "exited <code>"


class Child:
    """One supervised command; each (re)start is a generation, `<name>-g<n>`."""

    def __init__(self, name: str, argv: Argv, env: Mapping[str, str], tier: int) -> None:
        self.name = name
        self.argv_for = argv if callable(argv) else lambda _name: argv
        self.env = dict(env)
        self.tier = tier
        self.generation = 0
        self.argv: list[str] = []
        self.logs: list[Path] = []
        self.killed = False  # the next death was ours (kill -9), not the child's own doing
        self.stopping = False
        self.fixed_log: Path | None = None  # else one log per generation
        self._family: set[int] = set()
        self.proc: subprocess.Popen[bytes]

    @property
    def current_name(self) -> str:
        return f"{self.name}-g{self.generation}"

    def launch(self, log_path: Path, cwd: Path | None = None) -> None:
        self.generation += 1
        self.argv = list(self.argv_for(self.current_name))
        self.logs.append(log_path)
        self.killed = self.stopping = False
        with open(log_path, "ab") as log:  # the child holds its own copy of the descriptor
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
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
        self.stopping = True
        if self.alive():
            # Noted before the signal: once the parent exits, its orphans no longer point to it.
            self._family = descendants(self.pid)
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
        self._family = set()

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        self.terminate()
        self.finish(time.monotonic() + grace)
        return self.returncode

    def kill9(self) -> None:
        """kill -9 the process and every process it forked, as the OOM killer or a node loss."""
        self.killed = True
        if self.alive():
            family = descendants(self.pid)
            signal_group(self.pid, signal.SIGKILL)
            for member in family:
                signal_group(member, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        """Wait for a burst process to end; stopped (and TimeoutExpired raised) if it does not."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.logs[-1].read_text(errors="replace").splitlines()[-lines:])


class Supervisor:
    """Starts children and stops them all: highest tier first, each tier in parallel.

    A child logs to `log_path` if given, else to `default_log`, else to `<log_dir>/<name>-g<n>.log`.
    """

    def __init__(
        self,
        environ: Mapping[str, str],
        default_log: Path | None = None,
        pid_file: Path | None = None,
        *,
        log_dir: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.environ = environ
        self.default_log = default_log
        self.pid_file = pid_file
        self.log_dir = log_dir
        self.cwd = cwd
        self.children: list[Child] = []
        self.restarts: list[Respawn] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(
        self,
        name: str,
        argv: Argv,
        settings: Mapping[str, str],
        *,
        log_path: Path | None = None,
        tier: int = 1,
    ) -> Child:
        child = Child(name, argv, child_environment(self.environ, settings), tier)
        child.fixed_log = log_path or self.default_log
        self._launch(child)
        self.children.append(child)
        self._write_pid_file()
        return child

    def _launch(self, child: Child) -> None:
        log_path = child.fixed_log
        if log_path is None:
            assert self.log_dir is not None, "a log_dir, a default_log or a log_path"
            log_path = self.log_dir / f"{child.name}-g{child.generation + 1}.log"
        child.launch(log_path, self.cwd)

    def dead(self) -> list[Child]:
        """The children that ended on their own (or by kill -9), not those stopped."""
        return [c for c in self.children if not c.alive() and not c.stopping]

    def named(self, prefix: str) -> list[Child]:
        return [child for child in self.children if child.name.startswith(prefix)]

    def kill9(self, child: Child) -> None:
        with self._lock:  # the watcher must not restart it half way through the kill
            child.kill9()

    def restart_the_dead(self, clock: Callable[[], float]) -> None:
        """From now on, start again (after RESTART_DELAY) any child that dies, noting why."""
        self._watcher = threading.Thread(
            target=self._watch, args=(clock,), name="supervisor", daemon=True
        )
        self._watcher.start()

    def stop_all(self, grace: float = STOP_GRACE) -> list[Child]:
        """Stop every child; returns them in the order they were stopped."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        stopped: list[Child] = []
        for tier in sorted({c.tier for c in self.children}, reverse=True):
            batch = [c for c in self.children if c.tier == tier]
            stop_together(batch, grace)
            stopped.extend(batch)
        self.children.clear()
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        return stopped

    def _watch(self, clock: Callable[[], float]) -> None:
        while not self._stop.wait(WATCH_EVERY):
            for child in list(self.children):
                with self._lock:
                    if child.stopping or child.alive():
                        continue
                    cause = "kill -9" if child.killed else f"exited {child.returncode}"
                    self.restarts.append(Respawn(child.current_name, clock(), cause))
                time.sleep(RESTART_DELAY)
                with self._lock:
                    if not self._stop.is_set() and not child.stopping:
                        self._launch(child)

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


def stop_together(children: Iterable[Child], grace: float = STOP_GRACE) -> None:
    """SIGTERM to all first (warm shutdowns in parallel), then SIGKILL the stragglers."""
    batch = list(children)
    for child in batch:
        child.terminate()
    deadline = time.monotonic() + grace
    for child in batch:
        child.finish(deadline)


def signal_group(pid: int, signum: int) -> None:
    """Signal the process group led by `pid` (or `pid` alone if it leads none); gone is fine."""
    for send in (os.killpg, os.kill):
        try:
            send(pid, signum)
            return
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
