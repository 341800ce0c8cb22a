"""Declarative routing: which pipelines a completed series revision goes to. No eval."""

from __future__ import annotations

from fnmatch import fnmatchcase

from node.domain import SeriesAttributes
from node.settings import MatchRule, Pipeline


def _text_matches(pattern: str | list[str] | None, value: str) -> bool:
    if pattern is None:
        return True
    patterns = [pattern] if isinstance(pattern, str) else pattern
    return any(fnmatchcase(value.upper(), p.upper()) for p in patterns)


def _within(value: float | None, low: float | None, high: float | None) -> bool:
    if low is None and high is None:
        return True
    if value is None:
        return False  # a range was asked for and the series does not say
    return (low is None or value >= low) and (high is None or value <= high)


def matches(rule: MatchRule, series: SeriesAttributes) -> bool:
    """True when every condition the rule states holds for the series."""
    return (
        _text_matches(rule.called_ae, series.called_ae)
        and _text_matches(rule.calling_ae, series.calling_ae)
        and _text_matches(rule.modality, series.modality)
        and _text_matches(rule.body_part, series.body_part)
        and _text_matches(rule.sop_class_uid, series.sop_class_uid)
        and _text_matches(rule.series_description, series.series_description)
        and _text_matches(rule.image_type, series.image_type)
        and _within(series.instance_count, rule.min_instances, rule.max_instances)
        and _within(
            series.slice_thickness_mm, rule.min_slice_thickness_mm, rule.max_slice_thickness_mm
        )
    )


def route(series: SeriesAttributes, pipelines: list[Pipeline]) -> list[Pipeline]:
    """Every live pipeline whose rule matches, in configuration order, and every shadow of
    one of those (a shadow runs where its live pipeline runs, whatever its own rule)."""
    live = [p for p in pipelines if p.mode == "live" and matches(p.match, series)]
    names = {p.name for p in live}
    return [p for p in pipelines
            if p.name in names or (p.mode == "shadow" and p.shadow_of in names)]
