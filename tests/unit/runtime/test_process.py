"""Worker processes start with the allocator settings, unless the operator set their own, and
leave what they hold at start to no garbage collection."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from node.runtime.process import WORKER_ALLOCATOR_ENV, worker_allocator_env


def _environment(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put({name: os.environ.get(name) for name in WORKER_ALLOCATOR_ENV})


def _unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Remove ``name`` so that the test's end restores it as it was, set or not."""
    monkeypatch.setenv(name, "")
    monkeypatch.delenv(name)


def _spawned_environment() -> dict[str, str | None]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_environment, args=(queue,))
    process.start()
    seen: dict[str, str | None] = queue.get(timeout=60)
    process.join(60)
    return seen


def test_spawned_workers_inherit_the_allocator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in WORKER_ALLOCATOR_ENV:
        _unset(monkeypatch, name)
    worker_allocator_env()
    assert _spawned_environment() == WORKER_ALLOCATOR_ENV
    assert int(WORKER_ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]) >= 256 << 20  # CT-sized arrays


def test_an_operators_own_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    _unset(monkeypatch, "MALLOC_MMAP_THRESHOLD_")
    worker_allocator_env()
    assert _spawned_environment() == {**WORKER_ALLOCATOR_ENV, "MALLOC_TRIM_THRESHOLD_": "0"}


_EXEMPT_CHECK = """
import gc, weakref
from node.runtime.process import exempt_from_collection

class Node:
    pass

def cycle():
    first, second = Node(), Node()
    first.other, second.other = second, first
    return first

held = cycle()  # held when the process has started: frozen, never visited again
exempt_from_collection()
frozen = gc.get_freeze_count()
before = len(gc.get_objects())
later = weakref.ref(cycle())  # made afterwards, then garbage: still collected
found = gc.collect()
print(frozen > 1000, before < frozen, later() is None, found >= 2)
"""


def test_what_a_process_holds_at_start_is_exempt_and_later_cycles_are_still_collected() -> None:
    import subprocess
    import sys

    answer = subprocess.run([sys.executable, "-c", _EXEMPT_CHECK], capture_output=True,
                            text=True, timeout=120, check=True)
    assert answer.stdout.split() == ["True"] * 4, answer.stdout + answer.stderr
