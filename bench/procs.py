"""Processes the bench starts (RQ workers, our services): logged to a file, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.harness import REPO_ROOT, BenchError

# What a child inherits: enough to run Python, never the caller's own service settings.
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


class Proc:
    def __init__(self, args: Sequence[str], log_path: Path, env: Mapping[str, str] = ()) -> None:
        base = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        self.args = list(args)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.args,
            cwd=REPO_ROOT,
            env={**base, "PYTHONUNBUFFERED": "1", **dict(env)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stopping it reaches RQ's work horses too
        )

    @classmethod
    def python(
        cls, module_args: Sequence[str], log_path: Path, env: Mapping[str, str] = ()
    ) -> Proc:
        return cls([sys.executable, "-m", *module_args], log_path, env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for a burst process to finish; stop it and fail the measurement if it does not."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise BenchError(f"{self.args[2:5]} did not finish within {timeout:.0f}s") from None
        self._log.close()
        if code != 0:
            raise BenchError(f"{self.args[2:5]} exited {code}; log tail:\n{self.tail()}")
        return code

    def terminate(self) -> None:
        """SIGTERM without waiting: the warm shutdown of an RQ worker or the subscriber."""
        if self.alive():
            self._signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        self._log.close()

    def tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass
