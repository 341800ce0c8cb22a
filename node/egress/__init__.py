"""Results out: :mod:`.delivery` sends the outbox to each destination's
:class:`~node.egress.targets.Target` (a peer, a notification channel, or a kind given by the
composition root) and records each :class:`~node.domain.Outcome`; :mod:`.notify` builds the
webhook, FHIR and HL7 notifications."""

__all__ = ["delivery", "notify", "rejections", "targets"]
