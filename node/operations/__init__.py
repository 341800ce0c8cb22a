"""What an operator does and sees, whatever the entry point: the actions (:mod:`.actions`,
called by the CLI, the admin API and the dashboard), peers changed live (:mod:`.peers`),
readiness (:mod:`.readiness`), retention (:mod:`.retention`) and the Conformance Statement
(:mod:`.conformance`)."""

__all__ = ["actions", "conformance", "peers", "readiness", "replay", "retention"]
