"""One retry policy for every stage: exponential backoff with a cap, over a time window.

A transient failure (a PACS or Triton that is down, a rejected association that says
"try later") is retried after ``first_s``, doubling up to ``max_s``, until ``window_s`` has
passed since the first failure of the current run; then the item ends in its failure state
(dead letter, failed job) with the last reason, for an operator to see and requeue.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first_s: float
    max_s: float
    window_s: float

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...)."""
        return float(min(self.max_s, self.first_s * 2 ** max(failures - 1, 0)))

    def exhausted(self, first_failed_at: float | None, now: float) -> bool:
        """Whether the window that opened at ``first_failed_at`` has closed."""
        return first_failed_at is not None and now - first_failed_at >= self.window_s
