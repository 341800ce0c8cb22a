"""From a complete series to results: routing rules (:mod:`.rules`), the orchestrator that
routes series and runs jobs from the queue (:mod:`.orchestrator`), one job's execution
(:mod:`.execute`) and the worker processes it runs in (:mod:`.workers`)."""

__all__ = ["assessments", "drift", "execute", "orchestrator", "provenance", "rules", "shadow",
           "workers"]
