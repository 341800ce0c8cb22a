"""The node's processes. :mod:`node.roles.node` composes the parts one role process runs
(``receiver``: the Storage SCP, spool, series completion and routing; ``worker``: jobs on
worker processes; ``sender``: the outbox, retention, audit forwarding; ``web``: HTTP);
:mod:`node.roles.supervisor` starts one process per role and keeps them alive, and imports
none of them (no pynetdicom, highdicom, torch or MONAI in the supervisor)."""

ROLES = ("receiver", "worker", "sender", "web")
# A receiver started on its own (multi-host) leaves younger spool files and temporaries to the
# receivers that may still be writing them: recovery takes only those older than this.
SHARED_SPOOL_SETTLE_S = 300.0

__all__ = ["ROLES", "SHARED_SPOOL_SETTLE_S", "node", "supervisor"]
