"""Where jobs run: in a worker process apart from the node (the default), or in its own process.

``inference.isolation: process`` gives each worker its own OS process (``multiprocessing``
spawn): torch, MONAI, onnxruntime and the models live there, never in the process that
answers C-STORE. A worker process that dies (a segfault, the kernel's OOM killer) or runs a job
past ``inference.job_timeout_s`` is stopped and replaced by a fresh one; the job is retried
through the job queue like any failed attempt and fails with that reason after
``inference.job_attempts``. The worker process exits with the node: it is stopped at shutdown,
and the kernel kills it should the node itself die (``PR_SET_PDEATHSIG``).

``inference.isolation: thread`` runs jobs in the node's process (one shared backend), as
before; tests of one module use it with fakes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Protocol

from node.domain import Job
from node.infer.backend import Backend, InferenceFailed
from node.jobs.execute import PERMANENT_ERRORS, JobExecutor
from node.jobs.results import JobResult
from node.runtime.process import die_with_parent, exempt_from_collection, worker_allocator_env
from node.settings import Settings

log = logging.getLogger(__name__)

START_TIMEOUT_S = 600  # importing torch + MONAI and loading a backend, on a busy machine
CHECK_TIMEOUT_S = 300


class WorkerDied(RuntimeError):
    """The worker process ended while it ran a job (a crash, or killed): retried, counted."""


class JobTimedOut(RuntimeError):
    """A job ran past ``inference.job_timeout_s``; its worker process was stopped: retried,
    counted."""


class Executor(Protocol):
    """Runs one job at a time."""

    @property
    def backend_name(self) -> str: ...

    def warm_up(self) -> None: ...

    def check(self, model: str, version: int | None = None) -> None: ...

    def execute(self, job: Job, paths: list[str]) -> JobResult: ...

    def close(self) -> None: ...


def make_backend(settings: Settings) -> Backend:
    """The configured inference backend (embedded by default)."""
    inference = settings.inference
    if inference.backend == "triton":
        from node.infer.triton import TritonBackend

        return TritonBackend(
            inference.triton_url or "",
            protocol=inference.triton_protocol,
            timeout_s=inference.timeout_s,
            retries=inference.retries,
            shared_memory=inference.triton_shared_memory,
        )
    from node.infer.embedded import EmbeddedBackend

    return EmbeddedBackend(threads=cores_per_worker(settings))


class InProcessExecutor(JobExecutor):
    """Jobs in the node's own process (``isolation: thread``)."""

    def warm_up(self) -> None:
        """Load torch + MONAI, and highdicom's standard tables, before the first series
        needs them."""
        import node.infer.runner  # noqa: F401
        from node.encode import common

        common.warm_up()


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a stand-in that keeps its kind: a permanent
    failure stays permanent."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 (our own object, in this process)
        return exc
    except Exception:
        text = f"{exc.__class__.__name__}: {exc}"
        return InferenceFailed(text) if isinstance(exc, PERMANENT_ERRORS) else RuntimeError(text)


def _yield_cpu_to_receivers(settings: Settings) -> None:
    """Run at a lower CPU priority (``inference.worker_nice``): when the CPU is short, the
    processes that answer C-STORE go first and inference waits, not the PACS."""
    with contextlib.suppress(OSError):
        os.nice(settings.inference.worker_nice)


def cores_per_worker(settings: Settings) -> int:
    """The cores shared among the node's ``inference.workers`` worker processes: torch's and
    onnxruntime's intra-op threads per process, so that they do not each start one thread
    per core (2 workers on 2 cores had run 4 threads; dividing them took bench/load.py from
    793 to 915 studies/hour in one run)."""
    return max(1, len(os.sched_getaffinity(0)) // settings.inference.workers)


def _share_cores(settings: Settings) -> None:
    """torch's intra-op threads: :func:`cores_per_worker`."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(cores_per_worker(settings))


def _serve(settings: Settings, log_level: int, connection: Connection) -> None:
    """The worker process: build the backend, say ready, then run what the node sends."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node decides when its workers stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from node.runtime import logs

    logs.configure(logging.getLevelName(log_level).lower(), "worker")
    _yield_cpu_to_receivers(settings)
    executor = InProcessExecutor(settings, make_backend(settings))
    executor.warm_up()
    _share_cores(settings)
    exempt_from_collection()
    connection.send(("ready", None))
    while True:
        try:
            kind, payload = connection.recv()
        except (EOFError, OSError):
            break
        if kind == "stop":
            break
        try:
            if kind == "run":
                reply: Any = executor.execute(*payload)
            elif kind == "check":
                executor.check(*payload)
                reply = None
            else:
                raise RuntimeError(f"unknown request {kind!r}")
            connection.send(("ok", reply))
        except Exception as exc:
            connection.send(("error", _portable(exc)))
    executor.close()
    logging.shutdown()
    # At once: the process holds nothing durable, and the interpreter's own teardown (torch,
    # OpenMP threads) took seconds, which every stop of the node waited for.
    os._exit(0)


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"


class ProcessExecutor:
    """One worker process, started on first use and replaced when it dies or hangs."""

    def __init__(self, settings: Settings, name: str = "worker") -> None:
        self._settings = settings
        self._name = name
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def backend_name(self) -> str:
        return self._settings.inference.backend

    @property
    def pid(self) -> int | None:
        """The worker process's id while it runs (for operators and tests)."""
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def warm_up(self) -> None:
        with self._lock:
            self._ensure_started()

    def check(self, model: str, version: int | None = None) -> None:
        with self._lock:
            self._request("check", (model, version), CHECK_TIMEOUT_S, "checking a model")

    def execute(self, job: Job, paths: list[str]) -> JobResult:
        timeout_s = self._settings.inference.job_timeout_s
        with self._lock:
            result = self._request("run", (job, paths), timeout_s,
                                   f"job {job.id}")
        if not isinstance(result, JobResult):
            raise RuntimeError(f"worker process answered {type(result).__name__}")
        return result

    def close(self) -> None:
        """Stop the worker process (at once: a running job is the queue's to retry)."""
        self._closed = True
        self._stop_process(graceful=not self._lock.locked())

    # -- the worker process -------------------------------------------------------------
    def _ensure_started(self) -> Connection:
        if self._closed:
            raise WorkerDied("the node is stopping")
        if self._process is not None and self._process.is_alive() and self._connection:
            return self._connection
        self._stop_process(graceful=False)
        parent, child = self._context.Pipe()
        worker_allocator_env()
        process = self._context.Process(
            target=_serve, name=f"ainode-{self._name}",
            args=(self._settings, logging.getLogger().getEffectiveLevel(), child), daemon=True)
        process.start()
        child.close()
        self._process, self._connection = process, parent
        if not parent.poll(START_TIMEOUT_S):
            self._stop_process(graceful=False)
            raise WorkerDied(f"the worker process did not start within {START_TIMEOUT_S} s")
        try:
            parent.recv()
        except (EOFError, OSError):
            code = self._reap()
            raise WorkerDied(f"the worker process failed to start ({code})") from None
        log.info("%s: worker process %d ready (%s backend)", self._name, process.pid,
                 self.backend_name)
        return parent

    def _request(self, kind: str, payload: Any, timeout_s: float, what: str) -> Any:
        connection = self._ensure_started()
        process = self._process
        try:
            connection.send((kind, payload))
        except (BrokenPipeError, OSError):
            raise WorkerDied(f"the worker process was gone before {what} "
                             f"({self._reap()})") from None
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.error("%s: %s ran past %.0f s: stopping worker process %s", self._name,
                          what, timeout_s, process.pid)
                self._stop_process(graceful=False)
                raise JobTimedOut(f"{what} ran past inference.job_timeout_s ({timeout_s:.0f} s);"
                                  " its worker process was stopped")
            if connection.poll(min(remaining, 1.0)):
                try:
                    status, reply = connection.recv()
                except (EOFError, OSError):
                    break
                if status == "error":
                    raise reply
                return reply
            if not process.is_alive():
                break
        code = self._reap()
        log.error("%s: worker process died during %s (%s); a new one takes over", self._name,
                  what, code)
        raise WorkerDied(f"the worker process died during {what} ({code})")

    def _reap(self) -> str:
        process = self._process
        if process is None:
            return "no process"
        process.join(timeout=5)
        code = describe_exit(process.exitcode)
        self._discard()
        return code

    def _discard(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._process, self._connection = None, None

    def _stop_process(self, graceful: bool) -> None:
        process, connection = self._process, self._connection
        if process is None:
            return
        if graceful and connection is not None:
            with contextlib.suppress(OSError):
                connection.send(("stop", None))
            process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
        self._discard()
