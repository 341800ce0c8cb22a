"""The one orchestrator: route completed series to jobs; run a job: volume -> model -> result.

Every step ends in a durable state change in the job store: a job is ``done`` with its result
summary, ``queued`` again with a retry time (backend unreachable, unexpected error), or
``failed`` with a reason a retry cannot fix (unknown model, a series that is not a volume).
Results (label map + summary) are written under ``data_dir/results`` before the job is done;
the job's completion and its outbox entries are one transaction, taken only while the worker
still holds the job's lease (renewed by a heartbeat), so a job is never delivered twice.
"""

from __future__ import annotations

import errno
import functools
import logging
import threading
import time
from collections.abc import Callable

from node.audit.trail import SERIOUS_FAILURE, Audit, no_audit
from node.domain import AuditEvent, Job, SeriesKey
from node.infer.backend import Backend, BackendUnavailable
from node.infer.repository import ModelConfigError, ModelNotFound
from node.jobs.assessments import verdicts_from_notes
from node.jobs.drift import DriftWatch
from node.jobs.execute import PERMANENT_ERRORS, addressed, research_exports
from node.jobs.results import JobResult
from node.jobs.rules import route, with_slide
from node.jobs.shadow import compare
from node.jobs.workers import Executor, InProcessExecutor, JobTimedOut, WorkerDied
from node.runtime import metrics
from node.runtime.loops import Loop
from node.settings import Settings
from node.store import outbox, rejections
from node.store.database import Connection
from node.store.durable import free_disk_bytes
from node.store.jobs import JobStore
from node.store.outbox import ResultToSend
from node.store.queue import JobQueue, LeaseLost
from node.store.shadow import ShadowComparisons
from node.store.verdicts import Verdicts

log = logging.getLogger(__name__)

ROUTE_ATTEMPTS = 5
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")


class DiskBelowFloor(OSError):
    """Free disk under ``node.min_free_disk_mb``: the job waits for space (an outage)."""


def is_outage(exc: BaseException) -> bool:
    """A failure that is the machine's, not the job's: the inference backend unreachable, or
    the disk full (ENOSPC/EDQUOT anywhere in the exception's chain, also after it crossed a
    worker process as text). Retried over ``inference.retry_window_s`` without using
    attempts."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, BackendUnavailable | DiskBelowFloor):
            return True
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(seen) for text in DISK_FULL_TEXTS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Router:
    """Turns complete series into jobs: one per matching pipeline (idempotent, so several
    receivers may route the same series), or the series recorded as skipped."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        clock: Callable[[], float] = time.time,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._queue = JobQueue(store)
        self._clock = clock
        self._on_queued = on_queued
        self._route_failures: dict[SeriesKey, tuple[int, float]] = {}

    def series_complete(self, key: SeriesKey) -> int:
        """Queue a job per matching pipeline (or record the series as skipped)."""
        attributes = self._store.series_attributes(key)
        if attributes is None:
            return 0
        if attributes.modality == "KO" and self._rejection_notes(key, attributes.calling_ae):
            return 0
        if attributes.modality == "SM":
            attributes = with_slide(attributes, self._store.instance_paths(key))
        matched = route(attributes, self._settings.pipelines)
        if not matched:
            self._store.set_route(key, "skipped", "no pipeline matched")
            log.info(
                "series %s rev %d: no pipeline matched (skipped)",
                key.series_instance_uid,
                key.revision,
            )
            return 0
        queued = sum(
            self._queue.enqueue(key, [(p.name, p.model)], self._clock(), priority=p.priority)
            for p in matched
        )
        self._store.set_route(key, "routed", ", ".join(p.name for p in matched))
        log.info(
            "series %s rev %d: queued %s",
            key.series_instance_uid,
            key.revision,
            ", ".join(p.name for p in matched),
        )
        if queued and self._on_queued is not None:
            self._on_queued()
        return queued

    def _rejection_notes(self, key: SeriesKey, sender: str) -> bool:
        """A series of rejection notes from a PACS for the node's results: verdicts, audited,
        the series recorded as such (not routed)."""
        now = self._clock()
        found = verdicts_from_notes(self._store.instance_paths(key), Verdicts(self._store),
                                    sender, now)
        for job, title in found.items():
            self._store.audit(sender, AuditEvent.RESULT_ASSESSED,
                              f"job {job}: reject ({title})", now)
        if found:
            jobs = ", ".join(map(str, sorted(found)))
            self._store.set_route(key, "assessed", f"rejection note for job(s) {jobs}")
            log.info("series %s rev %d: a rejection note for the results of job(s) %s",
                     key.series_instance_uid, key.revision, jobs)
        return bool(found)

    def route_pending(self) -> int:
        """Route complete revisions not routed yet: completed just now, left by a crash, or
        whose routing failed (retried with backoff; after ``ROUTE_ATTEMPTS`` failures the
        series is marked ``failed`` with the reason). Returns how many were routed."""
        routed = 0
        now = self._clock()
        for key in self._store.unrouted_complete_series():
            failures, not_before = self._route_failures.get(key, (0, 0.0))
            if now < not_before:
                continue
            try:
                self.series_complete(key)
            except Exception as exc:
                failures += 1
                reason = f"{exc.__class__.__name__}: {exc}"[:200]
                if failures >= ROUTE_ATTEMPTS:
                    log.error("series %s rev %d: routing failed %d times, giving up: %s",
                              key.series_instance_uid, key.revision, failures, reason)
                    self._store.set_route(key, "failed", reason)
                    self._route_failures.pop(key, None)
                    continue
                delay = self._settings.inference.retry_policy.delay(failures)
                log.exception("series %s rev %d: routing failed; retrying in %.0f s",
                              key.series_instance_uid, key.revision, delay)
                self._route_failures[key] = (failures, now + delay)
                continue
            self._route_failures.pop(key, None)
            routed += 1
        return routed


def _job_text(job: Job, outcome: str, version: str = "") -> str:
    """A job as the audit trail names it: id, pipeline, model (and version), series."""
    model = f"{job.model} {version}" if version else job.model
    return (f"job {job.id}: {job.pipeline} on {model}, series "
            f"{job.series.series_instance_uid} rev {job.series.revision}: {outcome}")


class Orchestrator:
    """Routes completed series and runs jobs on a backend, on ``workers`` threads."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        backend: Backend | None = None,
        clock: Callable[[], float] = time.time,
        on_outbox: Callable[[], None] | None = None,
        executor_factory: Callable[[int], Executor] | None = None,
        *,
        owns_store: bool = True,
        audit: Audit = no_audit,
        current: Callable[[], Settings] | None = None,
    ) -> None:
        """Jobs run on one executor per worker from ``executor_factory`` (e.g. a worker
        process each), or else in this process on ``backend``, shared by the worker threads.
        ``owns_store``: no other worker process uses the store, so jobs found running at start
        were this node's (with several, a lease that runs out hands a job on instead)."""
        self._settings = settings
        self._current = current or (lambda: settings)
        self._store = store
        self._queue = JobQueue(store)
        self._drift = DriftWatch(store)
        self._on_outbox = on_outbox
        self._audit = audit
        if executor_factory is not None:
            self._executors: list[Executor] = [
                executor_factory(index) for index in range(settings.inference.workers)]
        elif backend is not None:
            self._executors = [InProcessExecutor(settings, backend)] * settings.inference.workers
        else:
            raise ValueError("an orchestrator needs a backend or an executor factory")
        self._clock = clock
        self._wake = threading.Event()
        self._held: dict[int, Job] = {}
        self._held_lock = threading.Lock()
        self.router = Router(settings, store, clock, on_queued=self._wake.set)
        self._owns_store = owns_store
        lease_s = settings.inference.lease_s
        self._loops = [
            Loop(f"worker-{index}", functools.partial(self.run_next, index), 1.0,
                 prepare=functools.partial(self._warm_up, index), wake=self._wake)
            for index in range(settings.inference.workers)
        ]
        self._heartbeat = Loop("job-heartbeat", self._renew_leases, lease_s / 3)

    @property
    def wake(self) -> threading.Event:
        """Set when jobs may be ready (the workers look at once)."""
        return self._wake

    # -- routing (kept here for callers that drive one orchestrator) ------------------------
    def series_complete(self, key: SeriesKey) -> int:
        return self.router.series_complete(key)

    def route_pending(self) -> int:
        return self.router.route_pending()

    # -- jobs ------------------------------------------------------------------------------
    def run_next(self, worker: int = 0) -> Job | None:
        """Claim and run one ready job on ``worker``'s executor; ``None`` when there is none."""
        inference = self._settings.inference
        job = self._queue.claim(self._clock(), inference.lease_s, inference.job_attempts)
        if job is None:
            return None
        with self._held_lock:
            self._held[job.id] = job
        try:
            self._run(job, self._executors[worker])
        except LeaseLost:
            log.warning("job %d (%s): no longer ours (superseded, or its lease was taken over);"
                        " its result is discarded", job.id, job.pipeline)
        finally:
            with self._held_lock:
                self._held.pop(job.id, None)
        return job

    def _disk_below_floor(self) -> DiskBelowFloor | None:
        floor_mb = self._settings.node.min_free_disk_mb
        try:
            free = free_disk_bytes(self._settings.node.data_dir)
        except OSError:
            return None
        if floor_mb and free < floor_mb * 1024 * 1024:
            return DiskBelowFloor(errno.ENOSPC, f"free disk {free // (1024 * 1024)} MB below "
                                  f"node.min_free_disk_mb ({floor_mb} MB)")
        return None

    def _run(self, job: Job, executor: Executor) -> None:
        full = self._disk_below_floor()
        if full is not None:  # results could not be written: wait for space, not an attempt
            self._retry_or_fail(job, full)
            return
        try:
            result = executor.execute(job, self._store.instance_paths(job.series))
        except PERMANENT_ERRORS as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            log.error("job %d (%s) failed: %s", job.id, job.pipeline, reason)
            self._fail(job, reason, self._clock())
        except LeaseLost:
            raise
        except Exception as exc:  # retried: backend down, disk, anything transient
            self._retry_or_fail(job, exc)
        else:
            now = self._clock()
            try:
                deliveries = self._addressed(job, result)
            except Exception as exc:  # the store unreadable: a retry with its reason
                log.warning("job %d (%s): results not addressed (%s)", job.id, job.pipeline,
                            exc.__class__.__name__)
                self._retry_or_fail(job, exc)
                return

            def queue_deliveries(db: Connection) -> None:
                for item in deliveries:
                    outbox.put(db, job.id, item, now)
                if job.series.revision > 1:  # the older revisions' results are stale now
                    stale = rejections.supersede(db, job.id, job.series.series_instance_uid,
                                                 job.series.revision, job.pipeline, now)
                    for old in stale:
                        self._store.audit("node", AuditEvent.RESULT_WITHDRAWN,
                                          f"job {old}: superseded by job {job.id}", now, db)
                    if stale:
                        log.info("job %d: results of job(s) %s superseded", job.id,
                                 ", ".join(map(str, stale)))
                        self._store.notify(db, "outbox")
                if deliveries:
                    self._store.notify(db, "outbox")
                self._store.audit("node", AuditEvent.JOB_DONE, _job_text(
                    job, f"{len(deliveries)} result(s) queued",
                    result.summary.get("model_version", "")), now, db,
                    objects=self._store.series_objects(job.series.series_instance_uid, db))

            self._queue.complete(job, result.summary, now, also=queue_deliveries)
            self._compare_shadows(job, now)
            try:
                self._drift.after_job(self._current(), job.pipeline, now)
            except Exception:  # watching is best effort; the job is done
                log.exception("drift of %s not checked", job.pipeline)
            metrics.JOBS_FINISHED.labels("done").inc()
            for stage, seconds in (result.summary.get("seconds") or {}).items():
                if stage in metrics.JOB_STAGES:
                    metrics.STAGE_SECONDS.labels(stage).observe(float(seconds))
            log.info("job %d (%s on %s) done", job.id, job.pipeline, job.model)
            if deliveries and self._on_outbox is not None:
                self._on_outbox()

    def _compare_shadows(self, job: Job, now: float) -> None:
        """When a live pipeline and its shadow have both finished a series revision, keep
        their comparison (whichever finished second records it; a failure is logged, the job
        stays done)."""
        pipelines = self._current().pipelines
        pipeline = next((p for p in pipelines if p.name == job.pipeline), None)
        if pipeline is None:
            return
        pairs = ([(pipeline.shadow_of, pipeline.name)] if pipeline.shadow_of else
                 [(pipeline.name, p.name) for p in pipelines if p.shadow_of == pipeline.name])
        comparisons = ShadowComparisons(self._store)
        for live, shadow in pairs:
            try:
                done = comparisons.done_results(job.series, [live, shadow])
                if live in done and shadow in done:
                    comparisons.record(job.series, shadow, live, done[live][0], done[shadow][0],
                                       compare(done[live][1], done[shadow][1]), now)
            except Exception:  # the comparison is lost, never the job
                log.exception("job %d: shadow %s not compared with %s", job.id, shadow, live)

    def _addressed(self, job: Job, result: JobResult) -> list[ResultToSend]:
        """The job's objects for the destinations in effect now (peers changed live)."""
        settings = self._current()
        pipeline = next((p for p in settings.pipelines if p.name == job.pipeline), None)
        if pipeline is None:  # the executor refuses a job whose pipeline is gone
            return []
        exports = research_exports(pipeline, job.series.series_instance_uid)
        if not result.objects:
            return exports
        attributes = self._store.series_attributes(job.series)
        return addressed(result.objects, pipeline, settings,
                         attributes.calling_ae if attributes else None,
                         bool(result.summary.get("urgent"))) + exports

    def _fail(self, job: Job, reason: str, now: float) -> None:
        self._queue.fail(job, reason, now)
        metrics.JOBS_FINISHED.labels("failed").inc()
        self._audit("node", AuditEvent.JOB_FAILED, _job_text(job, reason), outcome=SERIOUS_FAILURE,
                    objects=self._store.series_objects(job.series.series_instance_uid))

    def _retry_or_fail(self, job: Job, exc: Exception) -> None:
        inference = self._settings.inference
        policy = inference.retry_policy
        reason = f"{exc.__class__.__name__}: {exc}"[:300]
        now = self._clock()
        if is_outage(exc):  # backend down or disk full: retried over the window
            what = "backend unavailable" if isinstance(exc, BackendUnavailable) else "disk full"
            if policy.exhausted(job.first_failed_at, now):
                log.error("job %d: %s for %.0f s, giving up: %s",
                          job.id, what, policy.window_s, reason)
                self._fail(job, f"{what} for {policy.window_s:.0f} s: {reason}", now)
                return
            delay = policy.delay(job.transient + 1)
            log.warning("job %d: %s; retrying in %.0f s", job.id, reason, delay)
            self._queue.retry(job, reason, delay, now, counted=False)
            return
        if job.attempts >= inference.job_attempts:
            log.error("job %d gave up after %d attempts: %s", job.id, job.attempts, reason)
            self._fail(job, f"gave up after {job.attempts} attempts: {reason}", now)
            return
        delay = policy.delay(job.attempts)
        log.exception("job %d attempt %d failed; retrying in %.0f s", job.id, job.attempts, delay)
        self._queue.retry(job, reason, delay, now)

    # -- threads ---------------------------------------------------------------------------
    def check_models(self, worker: int = 0) -> dict[str, str]:
        """Each configured model on ``worker``'s executor: ``ready`` or why not. Checking loads
        the model there, so its first job does not wait for that. The first worker logs what
        is not ready; jobs retry or fail by themselves, so a backend that is still starting
        does not stop the node."""
        states: dict[str, str] = {}
        executor = self._executors[worker]
        for name, version in sorted({(p.model, p.version or 0) for p in self._settings.pipelines}):
            label = f"{name}/{version}" if version else name
            try:
                executor.check(name, version or None)
                states[label] = "ready"
            except (ModelNotFound, ModelConfigError, BackendUnavailable, WorkerDied,
                    JobTimedOut) as exc:
                states[label] = str(exc)
                if worker == 0:
                    log.error("model %s is not ready on the %s backend: %s", label,
                              executor.backend_name, exc)
        return states

    def start(self) -> None:
        """Jobs left running by a previous process are queued again (one node per job store),
        leftover series routed, and the workers started (they check the models once warm)."""
        reset = self._queue.reset_running(self._clock()) if self._owns_store else 0
        if reset:
            log.warning("%d job(s) were running when the node stopped: queued again", reset)
        self.route_pending()
        for loop in self._loops:
            loop.start()
        self._heartbeat.start()

    def _warm_up(self, worker: int = 0) -> None:
        """Start the worker's executor in the background (its process, torch + MONAI) and
        load the configured models into it: the first series should not wait for them (a
        node without pipelines never loads them)."""
        if self._settings.pipelines:
            self._executors[worker].warm_up()
            if worker == 0 or self._executors[worker] is not self._executors[0]:
                self.check_models(worker)

    def _renew_leases(self) -> bool:
        with self._held_lock:
            held = list(self._held.values())
        if held:
            for job in self._queue.heartbeat(held, self._clock(), self._settings.inference.lease_s):
                log.warning("job %d: lease lost (superseded or taken over)", job.id)
        return False

    def ensure_running(self) -> None:
        """Restart any worker (or heartbeat) thread that died."""
        for loop in (*self._loops, self._heartbeat):
            loop.ensure_running()

    def stop(self, grace_s: float = 10) -> None:
        """Stop the workers; jobs still running after ``grace_s`` are handed back (queued
        again at once, the attempt not counted) so a restart resumes them."""
        deadline = time.monotonic() + grace_s
        for loop in self._loops:
            loop.stop(timeout_s=max(0.0, deadline - time.monotonic()))
        with self._held_lock:
            held = list(self._held.values())
            self._held.clear()
        if held:
            released = self._queue.release_held(held, self._clock())
            log.warning("stopping: %d running job(s) handed back", released)
        self._heartbeat.stop(timeout_s=5)
        busy = any(loop.alive for loop in self._loops)
        for executor in {id(e): e for e in self._executors}.values():
            if busy and isinstance(executor, InProcessExecutor):
                continue  # a thread still uses it; the process exits anyway
            executor.close()  # a worker process: stopped, whatever it runs (handed back)
