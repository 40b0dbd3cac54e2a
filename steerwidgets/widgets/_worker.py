"""One background thread per widget that runs only the newest request.

The kernel's main thread must stay free to receive slider changes, and the model must not run two
generations at once, so requests are coalesced: a new submit replaces any request still waiting, and
the caller cancels the one in flight (through its own ``threading.Event``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class LatestWorker:
    """Runs ``fn(job)`` on a daemon thread for the most recently submitted job only."""

    def __init__(self, fn: Callable[[Any], None], name: str = "steerwidgets-worker"):
        self._fn = fn
        self._cond = threading.Condition()
        self._pending: Any = None
        self._has_pending = False
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Any) -> None:
        """Queue ``job``, replacing a job that has not started yet."""
        with self._cond:
            if self._closed:
                return
            self._pending = job
            self._has_pending = True
            self._cond.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._has_pending and not self._busy, timeout)

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._busy or self._has_pending

    def close(self) -> None:
        """Stop the thread after the current job (the caller cancels that job)."""
        with self._cond:
            self._closed = True
            self._pending, self._has_pending = None, False
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._has_pending or self._closed)
                if self._closed:
                    self._busy = False
                    self._cond.notify_all()
                    return
                job, self._pending, self._has_pending = self._pending, None, False
                self._busy = True
            try:
                self._fn(job)
            except Exception:  # the job reports its own errors; never let the thread die
                log.exception("steerwidgets worker job failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
