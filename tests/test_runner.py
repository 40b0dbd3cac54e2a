"""The widgets' one background runner (steerwidgets/widgets/_runner.py), without a model: latest wins,
cancel, close, errors handed to the callback, and two runners taking turns on one model lock. Every
test waits on events, never on time."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from steerwidgets.engine import GenerationCancelled
from steerwidgets.models import SteerableModel
from steerwidgets.widgets._runner import Runner

T = 10  # seconds; only a bound for a broken runner, never waited for when it works


@pytest.fixture
def runners():
    made: list[Runner] = []

    def make(*args, **kwargs) -> Runner:
        runner = Runner(*args, **kwargs)
        made.append(runner)
        return runner

    yield make
    for runner in made:
        assert runner.close(timeout=T)


class Errors:
    """An ``on_error`` that records what it got and lets a test wait for the n-th report."""

    def __init__(self) -> None:
        self.got: list[tuple[BaseException, object]] = []
        self.cond = threading.Condition()

    def __call__(self, exc: BaseException, job: object) -> None:
        with self.cond:
            self.got.append((exc, job))
            self.cond.notify_all()

    def wait(self, n: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.got) >= n, T)


def blocking_job(started: threading.Event, ran: list, name: str):
    """A job that says it started, then runs until cancelled, and ends as a cancelled job does."""

    def job(cancel: threading.Event) -> None:
        ran.append(name)
        started.set()
        assert cancel.wait(T)
        raise GenerationCancelled(name)

    return job


def test_fn_mode_runs_submitted_jobs_like_the_old_worker(runners):
    seen: list[int] = []
    runner = runners(seen.append)
    runner.submit(1)
    assert runner.wait_idle(T)
    runner.submit(2)
    assert runner.wait_idle(T) and not runner.busy
    assert seen == [1, 2]


def test_latest_wins_cancels_the_running_job_and_supersedes_the_waiting_one(runners):
    errors, ran, started = Errors(), [], threading.Event()
    runner = runners(on_error=errors)
    first = runner.submit(blocking_job(started, ran, "first"))
    assert started.wait(T)
    # While "first" runs (it waits for its cancel, so it cannot end before the next submits) ...
    second = runner.submit(lambda cancel: ran.append("second"))
    assert first.is_set()  # the running job is told to stop
    third = runner.submit(lambda cancel: ran.append("third"))
    assert second.is_set() and not third.is_set()  # the waiting job is superseded
    assert runner.wait_idle(T)
    assert ran == ["first", "third"]  # the superseded job never ran
    # Only the cancelled running job is reported; a superseded one is dropped silently.
    assert [type(exc) for exc, _ in errors.got] == [GenerationCancelled]


def test_cancel_stops_the_running_job_and_the_runner_stays_usable(runners):
    errors, ran, started = Errors(), [], threading.Event()
    runner = runners(on_error=errors)
    running = runner.submit(blocking_job(started, ran, "running"))
    assert started.wait(T)
    runner.cancel()
    assert running.is_set()
    assert runner.wait_idle(T) and errors.wait(1)
    exc, job = errors.got[0]
    assert isinstance(exc, GenerationCancelled) and str(exc) == "running"  # reported, with its job
    runner.submit(lambda cancel: ran.append("again"))
    assert runner.wait_idle(T) and ran == ["running", "again"]


def test_close_cancels_stops_the_thread_and_is_idempotent(runners):
    errors, ran, started = Errors(), [], threading.Event()
    runner = runners(on_error=errors)
    job = runner.submit(blocking_job(started, ran, "running"))
    assert started.wait(T)
    assert runner.close(timeout=T)  # cancels the job and waits for the thread to end
    assert job.is_set() and not runner._thread.is_alive() and runner.closed
    assert runner.close() and runner.close(timeout=None)  # again: nothing to do
    late = runner.submit(lambda cancel: ran.append("late"))
    assert late.is_set() and runner.wait_idle(T) and not runner.busy
    assert ran == ["running"] and errors.wait(1)


def test_close_from_inside_a_job_does_not_deadlock(runners):
    done = threading.Event()
    runner = runners()

    def job(cancel: threading.Event) -> None:
        assert not runner.close()  # the thread is this one: no join, not ended yet
        assert cancel.is_set()
        done.set()

    runner.submit(job)
    assert done.wait(T) and runner.close(timeout=T)


def test_errors_go_to_the_callback_and_the_thread_survives(runners):
    errors = Errors()
    runner = runners(on_error=errors)

    def broken(cancel: threading.Event) -> None:
        raise ValueError("layer 99 is out of range")

    runner.submit(broken)
    assert runner.wait_idle(T) and errors.wait(1)
    exc, job = errors.got[0]
    assert isinstance(exc, ValueError) and "layer 99" in str(exc) and job is broken
    ok = threading.Event()
    runner.submit(lambda cancel: ok.set())
    assert ok.wait(T)


def test_a_failing_error_callback_does_not_kill_the_thread(runners, caplog):
    def bad_callback(exc: BaseException, job: object) -> None:
        raise RuntimeError("the widget is gone")

    runner = runners(on_error=bad_callback)
    runner.submit(lambda cancel: 1 / 0)
    assert runner.wait_idle(T)
    ok = threading.Event()
    runner.submit(lambda cancel: ok.set())
    assert ok.wait(T)
    assert "on_error failed" in caplog.text


def test_without_a_callback_errors_are_logged(runners, caplog):
    runner = runners()
    runner.submit(lambda cancel: 1 / 0)
    assert runner.wait_idle(T)
    assert "ZeroDivisionError" in caplog.text


def test_two_runners_take_turns_on_one_lock():
    lock = threading.RLock()
    order: list[str] = []
    a_started, a_release, b_waiting = threading.Event(), threading.Event(), threading.Event()
    a = Runner(lock=lock)
    b = Runner(lock=lock, on_wait=lambda job: b_waiting.set())
    try:

        def job_a(cancel: threading.Event) -> None:
            order.append("a starts")
            a_started.set()
            assert a_release.wait(T)
            with lock:  # re-entrant: the engine takes the same lock inside a job
                order.append("a ends")

        a.submit(job_a)
        assert a_started.wait(T)
        b.submit(lambda cancel: order.append("b runs"))
        assert b_waiting.wait(T)  # b found the lock taken ...
        assert order == ["a starts"]  # ... and did not start
        a_release.set()
        assert a.wait_idle(T) and b.wait_idle(T)
        assert order == ["a starts", "a ends", "b runs"]
    finally:
        assert a.close(T) and b.close(T)


def test_a_job_cancelled_while_waiting_for_its_turn_never_starts():
    lock = threading.RLock()
    errors, b_waiting, ran = Errors(), threading.Event(), []
    b = Runner(lock=lock, on_error=errors, on_wait=lambda job: b_waiting.set())
    try:
        with lock:  # someone else (another widget, an engine call) holds the model
            b.submit(lambda cancel: ran.append("b"))
            assert b_waiting.wait(T)
            b.cancel()
            assert errors.wait(1)
        assert b.wait_idle(T) and ran == []
        assert isinstance(errors.got[0][0], GenerationCancelled)
    finally:
        assert b.close(T)


def test_the_model_lock_is_the_reentrant_one_the_runner_uses():
    field = {f.name: f for f in dataclasses.fields(SteerableModel)}["lock"]
    lock = field.default_factory()
    assert lock.acquire(blocking=False) and lock.acquire(blocking=False)  # re-entrant
    lock.release()
    lock.release()
