from __future__ import annotations

import threading
import time

import pytest

from node.runtime.loops import Loop
from node.runtime.retry import RetryPolicy


def _wait(predicate, timeout: float = 5) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_an_exception_in_a_pass_is_followed_by_a_pause_not_a_spin() -> None:
    calls: list[float] = []

    def failing() -> bool:
        calls.append(time.monotonic())
        raise RuntimeError("injected")

    loop = Loop("t", failing, interval_s=0.05)
    loop.start()
    time.sleep(0.5)
    loop.stop()
    # pauses of 0.05, 0.1, 0.2, 0.4 s: a handful of passes, never hundreds
    assert 2 <= len(calls) <= 6, len(calls)
    assert not loop.alive


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_prepare_failures_are_retried_inside_the_loop_and_a_dead_thread_restarts() -> None:
    prepared: list[int] = []
    steps = threading.Event()

    def prepare() -> None:
        prepared.append(1)
        if len(prepared) == 1:
            raise ImportError("injected warm-up fault")

    def step() -> bool:
        steps.set()
        if len(prepared) == 2 and not hasattr(step, "died"):
            step.died = True  # type: ignore[attr-defined]
            raise SystemExit("a BaseException kills the thread")
        return False

    loop = Loop("t", step, interval_s=0.01, prepare=prepare)
    loop.start()
    assert _wait(lambda: not loop.alive), "SystemExit ends the thread"
    assert prepared == [1, 1] and steps.is_set()
    assert loop.ensure_running() and loop.restarts == 1
    assert _wait(lambda: loop.alive)
    assert loop.ensure_running() is False
    loop.stop()


def test_retry_policy_backs_off_to_a_cap_within_a_window() -> None:
    policy = RetryPolicy(first_s=5, max_s=600, window_s=86400)
    assert [policy.delay(n) for n in (1, 2, 3, 8, 20)] == [5, 10, 20, 600, 600]
    assert not policy.exhausted(None, 10**9)
    assert not policy.exhausted(0, 86399) and policy.exhausted(0, 86400)


def test_a_loop_being_started_is_not_restarted_by_its_supervisor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The supervisor may look between the thread's creation and its start (seen in a real
    node: two delivery threads, every result sent twice). That thread has not died."""
    loop = Loop("t", lambda: False, interval_s=0.01)
    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def start_with_a_look_in_the_gap(thread: threading.Thread) -> None:
        if not started:
            started.append(thread)
            assert loop.ensure_running() is False
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_with_a_look_in_the_gap)
    loop.start()
    monkeypatch.undo()
    assert started and loop.alive and loop.restarts == 0
    assert [t.name for t in threading.enumerate()].count("t") == 1
    loop.stop()
