"""The audit trail: :mod:`.trail` records who did what (an :class:`~node.domain.AuditEvent`,
the actor, their address, the studies concerned) in the job store; :mod:`.atna` sends each line
as a DICOM audit message (PS3.15 A.5) to a syslog collector (RFC 5424)."""

__all__ = ["atna", "trail"]
