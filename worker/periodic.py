"""A pass run on a daemon thread beside the RQ worker, again and again until stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `step` every `every` seconds; a failed pass is logged and the next one tries again.

    The reaper and the reconciler are both this; each is also called pass by pass in tests."""

    def __init__(self, name: str, step: Callable[[], object], every: float, failure: str) -> None:
        self.name = name
        self.step = step
        self.every = every
        self.failure = failure  # the log message of a failed pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # a bad pass must not end the loop: the next one tries again
                log.exception(self.failure)
            self._stop.wait(self.every)
