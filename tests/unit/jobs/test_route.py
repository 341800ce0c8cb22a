from __future__ import annotations

from dataclasses import replace

import pytest

from node.domain import SeriesAttributes, SeriesKey, SlideAttributes
from node.jobs.rules import route
from node.settings import MatchRule, Pipeline

CT = SeriesAttributes(
    key=SeriesKey("1.2.3", 1), called_ae="AINODE", calling_ae="ORTHANC", modality="CT",
    body_part="ABDOMEN", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
    series_description="Abdomen 3.0 B30f", image_type="ORIGINAL\\PRIMARY\\AXIAL",
    instance_count=134, slice_thickness_mm=3.0,
)


def pipeline(**match: object) -> Pipeline:
    return Pipeline(name="p", match=MatchRule(**match), model="m")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({}, True),
        ({"modality": "CT", "min_instances": 20}, True),
        ({"modality": "ct"}, True),
        ({"modality": ["MR", "CT"]}, True),
        ({"modality": "MR"}, False),
        ({"min_instances": 200}, False),
        ({"max_instances": 100}, False),
        ({"calling_ae": "ORTH*"}, True),
        ({"calling_ae": "PACS2"}, False),
        ({"called_ae": "AINODE"}, True),
        ({"body_part": "CHEST"}, False),
        ({"series_description": "*b30f*"}, True),
        ({"series_description": "*lung*"}, False),
        ({"image_type": "ORIGINAL\\PRIMARY*"}, True),
        ({"image_type": "DERIVED*"}, False),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2"}, True),
        ({"min_slice_thickness_mm": 1.0, "max_slice_thickness_mm": 3.0}, True),
        ({"max_slice_thickness_mm": 2.0}, False),
    ],
)
def test_rules(match: dict[str, object], expected: bool) -> None:
    assert (route(CT, [pipeline(**match)]) != []) is expected


def test_thickness_rule_needs_a_thickness() -> None:
    unknown = replace(CT, slice_thickness_mm=None)
    assert route(unknown, [pipeline(max_slice_thickness_mm=5)]) == []
    assert route(unknown, [pipeline(modality="CT")]) != []


def test_every_matching_pipeline_in_order() -> None:
    first = Pipeline(name="a", match=MatchRule(modality="CT"), model="m1")
    second = Pipeline(name="b", match=MatchRule(modality="MR"), model="m2")
    third = Pipeline(name="c", match=MatchRule(), model="m3")
    assert [p.name for p in route(CT, [first, second, third])] == ["a", "c"]


SLIDE = replace(CT, modality="SM", sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.6",
                image_type="ORIGINAL\\PRIMARY\\LABEL\\NONE", slide=SlideAttributes(
                    image_types=("ORIGINAL\\PRIMARY\\LABEL\\NONE",
                                 "ORIGINAL\\PRIMARY\\VOLUME\\NONE"),
                    specimens=("S-1", "human tissue, IHC"),
                    stains=("3,3'-diaminobenzidine", "hematoxylin stain"),
                    optical_paths=("Brightfield illumination",)))


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        ({"modality": "SM", "stain": "*hematoxylin*"}, True),
        ({"modality": "SM", "stain": ["*eosin*", "*diaminobenzidine*"]}, True),
        ({"modality": "SM", "stain": "*eosin*"}, False),
        ({"specimen": "*IHC*"}, True),
        ({"specimen": "S-2"}, False),
        ({"optical_path": "brightfield*"}, True),
        ({"optical_path": "*fluorescence*"}, False),
        ({"image_type": "*\\VOLUME\\*"}, True),  # any of the slide's images
        ({"image_type": "*\\OVERVIEW\\*"}, False),
    ],
)
def test_a_slide_is_routed_by_its_stain_specimen_optical_path_and_images(
        match: dict[str, object], expected: bool) -> None:
    assert bool(route(SLIDE, [pipeline(**match)])) is expected


def test_slide_conditions_never_match_a_series_that_is_not_a_slide() -> None:
    assert route(CT, [pipeline(stain="*")]) == []
    assert route(CT, [pipeline(image_type="ORIGINAL*")])
