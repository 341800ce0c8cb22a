"""Research exports: PS3.15 Annex E de-identification (:mod:`.deidentify`, the generated
option table :mod:`.options`, :mod:`.table`), keyed pseudonyms (:mod:`.pseudonym`), the export
itself (:mod:`.export`) and a pipeline's research output as an outbox destination
(:mod:`.outbox`)."""

__all__ = ["deidentify", "export", "options", "outbox", "pseudonym", "table"]
