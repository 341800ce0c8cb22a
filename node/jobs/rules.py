"""Declarative routing: which pipelines a completed series revision goes to. No eval."""

from __future__ import annotations

import dataclasses
from fnmatch import fnmatchcase

from node.domain import SeriesAttributes, SlideAttributes
from node.imaging.slide import SlideError, describe_slide
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


def _any_matches(pattern: str | list[str] | None, values: tuple[str, ...]) -> bool:
    """A condition on a slide's list of values: one of them matches."""
    return pattern is None or any(_text_matches(pattern, value) for value in values)


def _slide_matches(rule: MatchRule, series: SeriesAttributes) -> bool:
    slide = series.slide
    if slide is None:  # not a slide: a slide condition cannot hold
        return rule.specimen is None and rule.stain is None and rule.optical_path is None
    return (_any_matches(rule.specimen, slide.specimens)
            and _any_matches(rule.stain, slide.stains)
            and _any_matches(rule.optical_path, slide.optical_paths))


def matches(rule: MatchRule, series: SeriesAttributes) -> bool:
    """True when every condition the rule states holds for the series."""
    image_types = series.slide.image_types if series.slide else (series.image_type,)
    return (
        _text_matches(rule.called_ae, series.called_ae)
        and _text_matches(rule.calling_ae, series.calling_ae)
        and _text_matches(rule.modality, series.modality)
        and _text_matches(rule.body_part, series.body_part)
        and _text_matches(rule.sop_class_uid, series.sop_class_uid)
        and _text_matches(rule.series_description, series.series_description)
        and _any_matches(rule.image_type, image_types)
        and _slide_matches(rule, series)
        and _within(series.instance_count, rule.min_instances, rule.max_instances)
        and _within(
            series.slice_thickness_mm, rule.min_slice_thickness_mm, rule.max_slice_thickness_mm
        )
    )


def with_slide(series: SeriesAttributes, paths: list[str]) -> SeriesAttributes:
    """A slide's series with what its headers say (unreadable headers: nothing; the job then
    fails saying why)."""
    try:
        slide = describe_slide(paths)
    except SlideError:
        return dataclasses.replace(series, slide=SlideAttributes())
    return dataclasses.replace(series, slide=SlideAttributes(
        slide.image_types, slide.specimens, slide.stains, slide.optical_paths))


def route(series: SeriesAttributes, pipelines: list[Pipeline]) -> list[Pipeline]:
    """Every live pipeline whose rule matches, in configuration order, and every shadow of
    one of those (a shadow runs where its live pipeline runs, whatever its own rule)."""
    live = [p for p in pipelines if p.mode == "live" and matches(p.match, series)]
    names = {p.name for p in live}
    return [p for p in pipelines
            if p.name in names or (p.mode == "shadow" and p.shadow_of in names)]
