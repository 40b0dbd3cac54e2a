"""The one way widgets run background work: a :class:`Runner` per widget.

The kernel's main thread must stay free to receive slider moves and button clicks, and one model must
not run two nnsight traces at once (they break each other), so every widget hands its work to a runner:

- **latest wins**: :meth:`Runner.submit` cancels the running job (sets its ``threading.Event``) and
  replaces a job still waiting; only the newest job runs next.
- **cancellable**: :meth:`Runner.cancel` sets the events of the running and the waiting job.
- **turns on the model**: with ``lock=model.lock`` (the re-entrant lock on
  :class:`~steerwidgets.SteerableModel` that every engine call also takes) a job runs only while it holds
  the lock, so runs of different widgets on one model take turns; a job cancelled while it waits for its
  turn never starts.
- **errors are never lost**: an exception escaping a job (``GenerationCancelled`` included) goes to
  ``on_error(exc, job)``, which the widget uses to show it; without one it is logged. The thread survives.
- :meth:`Runner.close` cancels and stops the thread (idempotent); :meth:`Runner.wait_idle` blocks until
  nothing is queued or running.

A job is whatever was submitted: with ``fn``, the runner calls ``fn(job)`` (the job carries its own
cancel event, as the Playground's do); without, the job is a callable and the runner calls
``job(cancel)`` with the event that :meth:`submit` returned.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..engine import GenerationCancelled

log = logging.getLogger(__name__)

LOCK_POLL_S = 0.05  # how often a job waiting for the model's lock looks at its cancel event


class Runner:
    """One daemon thread that runs the newest submitted job, one job at a time."""

    def __init__(
        self,
        fn: Callable[[Any], None] | None = None,
        *,
        lock: Any = None,
        on_error: Callable[[BaseException, Any], None] | None = None,
        on_wait: Callable[[Any], None] | None = None,
        name: str = "steerwidgets-runner",
    ) -> None:
        self._fn = fn
        self._lock = lock
        self._on_error = on_error
        self._on_wait = on_wait
        self._cond = threading.Condition()
        self._queued: tuple[Any, threading.Event] | None = None
        self._running: threading.Event | None = None  # the running job's cancel event
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # --- public ---------------------------------------------------------------------------------------
    def submit(self, job: Any = None) -> threading.Event:
        """Queue ``job`` to run next: cancels the running job and replaces a waiting one.

        Returns the job's cancel event (already set when the runner is closed: the job will not run).
        """
        cancel = threading.Event()
        with self._cond:
            if self._closed:
                cancel.set()
                return cancel
            if self._queued is not None:
                self._queued[1].set()  # superseded: dropped without a report, the newer job reports
            if self._running is not None:
                self._running.set()
            self._queued = (job, cancel)
            self._cond.notify_all()
        return cancel

    def cancel(self) -> None:
        """Cancel the running job and the waiting one (which is then reported, not run)."""
        with self._cond:
            if self._running is not None:
                self._running.set()
            if self._queued is not None:
                self._queued[1].set()

    def close(self, timeout: float | None = 0.0) -> bool:
        """Cancel everything and stop the thread (idempotent); True once the thread has ended.

        Waits up to ``timeout`` seconds (``None``: until it ends) for the running job to stop; never waits
        when called from a job itself.
        """
        with self._cond:
            self._closed = True
            if self._running is not None:
                self._running.set()
            if self._queued is not None:
                self._queued[1].set()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread and timeout != 0:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._queued is None and self._running is None, timeout)

    @property
    def busy(self) -> bool:
        """A job is running or waiting to run."""
        with self._cond:
            return self._queued is not None or self._running is not None

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the thread -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queued is not None or self._closed)
                if self._queued is None:  # closed and nothing left to report
                    self._cond.notify_all()
                    return
                (job, cancel), self._queued = self._queued, None
                self._running = cancel
            try:
                self._run_one(job, cancel)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _run_one(self, job: Any, cancel: threading.Event) -> None:
        try:
            if not self._take_turn(job, cancel):
                raise GenerationCancelled("cancelled before it started")
            try:
                if self._fn is not None:
                    self._fn(job)
                else:
                    job(cancel)
            finally:
                if self._lock is not None:
                    self._lock.release()
        except Exception as exc:  # handed on: the thread must survive and the error be shown
            self._report(exc, job)

    def _take_turn(self, job: Any, cancel: threading.Event) -> bool:
        """Hold the model's lock (True), or give up when the job is cancelled first (False)."""
        if cancel.is_set():
            return False
        if self._lock is None:
            return True
        if not self._lock.acquire(blocking=False):
            if self._on_wait is not None:
                try:
                    self._on_wait(job)
                except Exception:
                    log.exception("steerwidgets runner: on_wait failed")
            while not self._lock.acquire(timeout=LOCK_POLL_S):
                if cancel.is_set():
                    return False
        if cancel.is_set():
            self._lock.release()
            return False
        return True

    def _report(self, exc: Exception, job: Any) -> None:
        if self._on_error is None:
            if not isinstance(exc, GenerationCancelled):
                log.error("steerwidgets background job failed", exc_info=exc)
            return
        try:
            self._on_error(exc, job)
        except Exception:
            log.exception("steerwidgets runner: on_error failed while reporting %r", exc)
