"""Prometheus metrics (``/metrics`` on the web role), named as Prometheus asks: ``ainode_``
prefix, ``_total`` counters, ``_seconds`` histograms, base units. Labels are small fixed sets
(a transport, a status code, a stage, a result kind): never a UID, an AE title from the
network or anything about a patient.

Each role process counts what it does. Under ``ainode serve`` the supervisor gives every role
process ``PROMETHEUS_MULTIPROC_DIR`` (``<data_dir>/metrics``, emptied at start), so the web
role's ``/metrics`` adds up every process's counters and histograms
(prometheus-client's multiprocess mode); a process on its own counts in its own registry.
What the job store knows (jobs by state, queue depth) and the disk are read at scrape time by
the web role (:mod:`node.web.metrics`), so they hold across processes and machines.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# stage durations: a chest film takes well under a second, a CT minutes
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

INSTANCES_RECEIVED = Counter(
    "ainode_instances_received", "Instances stored and acknowledged", ["transport"])
BYTES_RECEIVED = Counter(
    "ainode_received_bytes", "Bytes of instances stored", ["transport"])
INSTANCES_REFUSED = Counter(
    "ainode_instances_refused", "Instances refused, by DIMSE status (also for STOW-RS)",
    ["transport", "status"])
ASSOCIATIONS = Counter(
    "ainode_associations", "DICOM associations accepted or rejected (by reason)",
    ["outcome", "reason"])
SERIES_COMPLETED = Counter(
    "ainode_series_completed", "Series found complete, by what completed them", ["reason"])
JOBS_FINISHED = Counter(
    "ainode_jobs_finished", "Jobs that ended (done or failed)", ["outcome"])
STAGE_SECONDS = Histogram(
    "ainode_stage_duration_seconds", "Time a job spends in each stage (load, preprocess,"
    " infer, postprocess, encode, write: results durably on disk; send: one batch to one"
    " destination)", ["stage"],
    buckets=STAGE_BUCKETS)
TRITON_SECONDS = Histogram(
    "ainode_triton_request_duration_seconds", "Triton inference request latency",
    buckets=STAGE_BUCKETS)
RESULTS = Counter(
    "ainode_results", "Result objects handled by the sender, by kind and outcome"
    " (sent, retry, dead)", ["kind", "outcome"])

# the stages a job records (node.infer.runner.StageTimes, node.jobs.execute); "send" is the sender's
JOB_STAGES = ("load", "preprocess", "infer", "postprocess", "encode", "write")

# the reasons an association is rejected, as labels (a fixed set)
REJECTION_REASONS = ("unknown_caller", "wrong_host", "other", "silent", "too_many_waiting",
                     "bad_ae_title")


def rejection_reason(why: str) -> str:
    """A fixed label for a rejection explained by :class:`node.ingest.callers.CallerPolicy`."""
    if "not in peers" in why:
        return "unknown_caller"
    if "hosts" in why or "address" in why:
        return "wrong_host"
    return "other"


def _initialise_series() -> None:
    """The labelled counters that alert rules and dashboards compute rates of, present at 0
    from the start: Prometheus's ``increase``/``rate`` cannot see the first increment of a
    series that appears already at 1 (so "nothing received" rules stay right)."""
    for transport in ("dimse", "stow"):
        INSTANCES_RECEIVED.labels(transport)
    for outcome in ("done", "failed"):
        JOBS_FINISHED.labels(outcome)


_initialise_series()
