"""Durable state. The data directory's layout (:mod:`.layout`), files written atomically
(:mod:`.durable`, :mod:`.spool`), and the job store on SQLite or PostgreSQL
(:mod:`.database`, :mod:`.schema`): instances and series (:mod:`.jobs`, :mod:`.series`), the job
queue (:mod:`.queue`), the outbox (:mod:`.outbox`), withdrawn results (:mod:`.rejections`),
requeues (:mod:`.requeue`), start-up recovery (:mod:`.recovery`)."""

__all__ = [
    "database",
    "durable",
    "jobs",
    "layout",
    "outbox",
    "queue",
    "recovery",
    "rejections",
    "requeue",
    "schema",
    "series",
    "shadow",
    "spool",
    "verdicts",
]
