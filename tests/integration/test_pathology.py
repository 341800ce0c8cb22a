"""Whole slides: Orthanc (with its WSI plugin) -> node (the README's pathology pipeline) ->
Orthanc. A real stained slide comes back with annotations, a SEG and an SR that lie on its
tissue and agree with an independent computation of the model (scikit-image's ``rgb2hed``),
and OHIF's microscopy mode in Chromium draws the SR's regions over that tissue; a synthetic
50,176 x 50,176 slide is processed within bounded memory."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml
from PIL import Image
from skimage.color import rgb2hed

from node.imaging.slide import check_pyramid, describe_slide
from node.infer.embedded import EmbeddedBackend
from node.infer.repository import load_model_spec
from node.infer.tiles import run_slide_model
from node.infer.triton import TritonBackend
from tests.support.dicom_checks import DCIODVFY, dciodvfy_errors, fetch
from tests.support.environment import ROOT, free_port, require, wait_for
from tests.support.node import NodeProcess, ct_body_node_sections
from tests.support.ohif_page import CHROMIUM, ohif_browser
from tests.support.orthanc import WSI_PLUGIN, Orthanc, start_orthanc
from tests.support.slides import Slide, in_tissue, large_slide, stained_slide
from tests.support.viewer_site import OHIF_DIST, ohif_site

pytestmark = pytest.mark.integration

SPARSE_BELOW, DENSE_ABOVE, STEEPNESS = 0.015, 0.025, 400.0  # models/wsi_stain_density.py
MAX_RSS_MB = 2048


def readme_pipelines() -> list[dict[str, Any]]:
    """The README's pathology pipeline, as written there."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Pathology (whole-slide images)", 1)[1]
    snippet = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    return list(yaml.safe_load(snippet)["pipelines"])


def send_through_orthanc(pacs: Orthanc, node: NodeProcess, slide: Slide, results: int,
                         timeout: float) -> None:
    study = pacs.upload(slide.files)
    pacs.api("/modalities/ainode/store", json.dumps({"Resources": [study],
                                                      "Synchronous": True}))
    assert wait_for(lambda: node.query(
        "SELECT COUNT(*) FROM outbox WHERE state='sent'") == [(results,)], timeout, 0.5), (
        node.query("SELECT id, pipeline, state, error FROM jobs"), node.log()[-3000:])


def results_in_pacs(pacs: Orthanc, slide: Slide) -> dict[str, pydicom.Dataset]:
    """The node's ANN, SEG and SR for the slide, as Orthanc holds them."""
    found = pacs.series_by_modality(slide.study_uid)
    return {kind: fetch(pacs, slide.study_uid, series)[0]
            for kind, modality in (("ann", "ANN"), ("seg", "SEG"), ("sr", "SR"))
            for series in found.get(modality, [])}


def tile_boxes(ann: pydicom.Dataset, base: pydicom.Dataset) -> dict[str, list[Any]]:
    """Per class group: each polygon back in base-level pixels as (row0, col0, row1, col1),
    with its probability."""
    annotations = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(ann)
    to_pixels = hd.spatial.ReferenceToImageTransformer.for_image(base,
                                                                 for_total_pixel_matrix=True)
    boxes: dict[str, list[Any]] = {}
    for group in annotations.get_annotation_groups():
        label = str(group.label).split(" ")[0]
        if label == "tissue":
            continue
        names, values, _ = group.get_measurements()
        probabilities = values[:, [n.meaning for n in names].index("Class probability")]
        for polygon, probability in zip(group.get_graphic_data(
                coordinate_type=hd.ann.AnnotationCoordinateTypeValues.SCOORD3D),
                probabilities, strict=True):
            pixels = to_pixels(np.asarray(polygon)) + 0.5  # corners: half a pixel before
            columns, rows = pixels[:, 0], pixels[:, 1]
            boxes.setdefault(label, []).append(
                (round(rows.min()), round(columns.min()), round(rows.max()), round(columns.max()),
                 float(probability)))
    return boxes


def reference_class(tile: Any) -> tuple[int, float, float]:
    """The model computed independently: mean haematoxylin of rgb2hed, soft thresholds."""
    density = float(rgb2hed(tile)[..., 0].mean())
    scores = np.array([STEEPNESS * (SPARSE_BELOW - density), 0.0,
                       STEEPNESS * (density - DENSE_ABOVE)])
    probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    label = int(np.argmax(probabilities))
    return label, float(probabilities[label]), density


GREEN_ROI = ((0, 100), (180, 256), (0, 100))  # how OHIF's microscopy mode strokes SR regions


def _green(rgb: Any) -> Any:
    (r0, r1), (g0, g1), (b0, b1) = GREEN_ROI
    return ((rgb[..., 0] >= r0) & (rgb[..., 0] < r1) & (rgb[..., 1] >= g0)
            & (rgb[..., 1] < g1) & (rgb[..., 2] >= b0) & (rgb[..., 2] < b1))


def drawn_over_tissue_in_ohif(orthanc_http_port: int, slide: Slide, tmp_path: Path) -> None:
    """OHIF's microscopy mode (Chromium) shows the slide; opening the node's SR (as a user
    does from the study panel) draws its regions: every stroke on the stained tissue as the
    screen shows it, the box around the tissue on all four of its sides."""
    require(CHROMIUM)
    require(str(OHIF_DIST / "index.html"))  # `make viewer-deps`
    with ohif_site(orthanc_http_port) as url, ohif_browser(url, tmp_path) as page:
        page.page.goto(f"{url}/microscopy?StudyInstanceUIDs={slide.study_uid}")
        page.page.wait_for_function(
            "() => window.services && window.services.displaySetService.getActiveDisplaySets()"
            ".some(ds => ds.Modality === 'SR')"
            " && document.querySelector('.ol-viewport canvas')", timeout=90_000)
        viewport = page.page.locator(".ol-viewport").first.bounding_box()
        inset = page.page.locator(".ol-overviewmap").first.bounding_box()
        before = settled_screen(page)
        page.page.evaluate(
            "async () => { const ds = window.services.displaySetService.getActiveDisplaySets()"
            ".find(ds => ds.Modality === 'SR'); await ds.load(ds.getSourceDisplaySet()); }")
        page.page.wait_for_function(
            "() => window.services.displaySetService.getActiveDisplaySets()"
            ".some(ds => ds.Modality === 'SR' && ds.isLoaded)", timeout=60_000)
        after = settled_screen(page)
        page.save("slide-sr.png")
        errors = page.viewer_errors()
    assert errors == [], errors
    # the stained tissue on screen, before any region is drawn (viewport only, not the inset)
    highest, lowest = before.max(axis=2), before.min(axis=2)
    stained = (highest - lowest) / np.maximum(highest, 1) > 0.15
    shown = np.zeros(stained.shape, dtype=bool)
    edge = 8  # the active viewport's (blue) frame is drawn just inside it
    shown[round(viewport["y"]) + edge:round(viewport["y"] + viewport["height"]) - edge,
          round(viewport["x"]) + edge:round(viewport["x"] + viewport["width"]) - edge] = True
    if inset:
        shown[round(inset["y"]):round(inset["y"] + inset["height"]) + 1,
              round(inset["x"]):round(inset["x"] + inset["width"]) + 1] = False
    rows, columns = np.nonzero(stained & shown)
    top, bottom, left, right = rows.min(), rows.max(), columns.min(), columns.max()
    assert not _green(before).any()
    strokes = _green(after) & shown
    ys, xs = np.nonzero(strokes)
    assert len(ys) > 1000, len(ys)
    slack = 10  # pixels on screen (the box is ~280): the palest stained rim is not tissue
    near = ((ys >= top - slack) & (ys <= bottom + slack) & (xs >= left - slack)
            & (xs <= right + slack))
    assert near.mean() >= 0.9, near.mean()  # the rest: the regions' area labels beside them
    for band in (strokes[top - slack:top + slack, left:right],
                 strokes[bottom - slack:bottom + slack, left:right],
                 strokes[top:bottom, left - slack:left + slack].T,
                 strokes[top:bottom, right - slack:right + slack].T):
        assert band.any(axis=0).mean() > 0.8  # the tissue's box, drawn along each side


def settled_screen(page: Any) -> Any:
    """The page as rendered, once two captures a moment apart agree."""
    previous = None
    for _ in range(40):
        time.sleep(0.5)
        capture = np.asarray(Image.open(io.BytesIO(page.page.screenshot())).convert("RGB"),
                             dtype=np.int16)
        if previous is not None and np.array_equal(capture, previous):
            return capture
        previous = capture
    return previous


def test_a_stained_slide_comes_back_with_annotations_seg_and_sr_on_its_tissue(
    tmp_path: Path, node_factory: Any,
) -> None:
    require(DCIODVFY)
    slide = stained_slide(tmp_path / "slide")
    http_port, pacs_port = free_port(), free_port()
    sections = ct_body_node_sections(pacs_port)
    pipelines = readme_pipelines()
    assert pipelines[0]["match"] == {"modality": "SM", "stain": "*hematoxylin*"}
    # a stain the slide was not given: this pipeline must not run
    pipelines.append({**pipelines[0], "name": "eosin-only",
                      "match": {"modality": "SM", "stain": "*eosin*"}})
    sections["pipelines"] = pipelines
    node = node_factory(**sections).start()
    with start_orthanc(tmp_path, http_port, pacs_port, node.port,
                       plugins=(WSI_PLUGIN,)) as pacs:
        send_through_orthanc(pacs, node, slide, 3, 180)
        # the PACS's own slide viewer (orthanc-wsi) sees the pyramid the node read
        (found,) = pacs.api("/tools/lookup", slide.series_uid)
        series_id = found["ID"]
        pyramid = pacs.api(f"/wsi/pyramids/{series_id}")
        assert (pyramid["TotalWidth"], pyramid["TotalHeight"]) == (1536, 1536)
        results = results_in_pacs(pacs, slide)
        drawn_over_tissue_in_ohif(http_port, slide, tmp_path)
    assert sorted(results) == ["ann", "seg", "sr"]
    assert node.query("SELECT pipeline, state FROM jobs") == [("slide-stain-density", "done")]
    for dataset in results.values():
        assert dciodvfy_errors(dataset, tmp_path) == [], dataset.SOPClassUID.name
        assert "wsi_stain_density 1.0.0" in dataset.SeriesDescription
        assert "not for primary diagnosis" in dataset.SeriesDescription
        assert dataset.StudyInstanceUID == slide.study_uid
    (summary,) = [json.loads(row[0]) for row in node.query("SELECT result FROM jobs")]

    levels = describe_slide([str(f) for f in slide.files]).levels
    base = pydicom.dcmread(levels[0].path, stop_before_pixels=True)
    pixels = hd.imread(levels[0].path).get_total_pixel_matrix(dtype=np.uint8)
    top, left, bottom, right = slide.tissue_box

    # ANN: every tile on the tissue, of the class and probability computed independently
    boxes = tile_boxes(results["ann"], base)
    labels = ["sparse", "moderate", "dense"]
    assert sum(len(b) for b in boxes.values()) == summary["slide"]["tiles_classified"] > 30
    borderline = 0
    for label, items in boxes.items():
        assert len(items) == summary["slide"]["classes"][label]["tiles"]
        for row0, col0, row1, col1, probability in items:
            assert (row1 - row0, col1 - col0) == (64, 64)
            assert top - 64 < row0 and row1 < bottom + 64 and left - 64 < col0 \
                and col1 < right + 64, (label, row0, col0)
            expected, expected_probability, density = reference_class(
                pixels[row0:row1, col0:col1])
            if min(abs(density - SPARSE_BELOW), abs(density - DENSE_ABOVE)) < 1e-4:
                borderline += 1
                continue
            assert labels[expected] == label, (row0, col0, density)
            assert probability == pytest.approx(expected_probability, abs=1e-3)
    assert borderline <= 2

    # SEG: on the base level's grid, every labelled pixel on the tissue
    seg = hd.seg.Segmentation.from_dataset(results["seg"])
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0] \
        .ReferencedSOPInstanceUID == base.SOPInstanceUID
    labelled = seg.get_total_pixel_matrix(combine_segments=True)
    assert labelled.shape == (1536, 1536)
    rows, columns = np.nonzero(labelled)
    assert rows.min() >= top - 8 and rows.max() < bottom + 8
    assert columns.min() >= left - 8 and columns.max() < right + 8
    assert len(rows) >= 0.4 * (bottom - top) * (right - left)

    # SR: the tissue area and the shares, as the job measured them
    sr = hd.sr.Comprehensive3DSR.from_dataset(results["sr"])
    groups = sr.content.get_planar_roi_measurement_groups()
    slide_group, *region_groups = groups
    assert slide_group.tracking_identifier == "wsi_stain_density slide"
    measured = {m.name.meaning: float(m.value) for m in slide_group.get_measurements()}
    assert measured["Area"] == pytest.approx(summary["slide"]["tissue_area_mm2"], abs=1e-3)
    assert 0.1 < measured["Area"] <= 0.262  # the tissue is at most the 0.512 mm square
    # each tissue region's outline on the tissue, its area no more than the whole
    to_pixels = hd.spatial.ReferenceToImageTransformer.for_image(base,
                                                                 for_total_pixel_matrix=True)
    assert 1 <= len(region_groups) <= 20
    for group in region_groups:
        outline = to_pixels(np.asarray(group.roi.value))
        assert outline[:, 1].min() > top - 8 and outline[:, 1].max() < bottom + 8
        assert outline[:, 0].min() > left - 8 and outline[:, 0].max() < right + 8
        (area,) = [float(m.value) for m in group.get_measurements() if m.name.meaning == "Area"]
        assert 0.001 <= area <= measured["Area"] * 1.05
    shares = [measured[f"Share of tissue: {label}"] for label in labels]
    assert sum(shares) == pytest.approx(100.0, abs=0.05)


def test_a_50k_slide_is_processed_in_bounded_memory(tmp_path: Path,
                                                    node_factory: Any) -> None:
    template = stained_slide(tmp_path / "template").files[0]
    slide = large_slide(tmp_path / "large", template)
    http_port, pacs_port = free_port(), free_port()
    sections = ct_body_node_sections(pacs_port)
    sections["pipelines"] = readme_pipelines()
    node = node_factory(**sections).start()
    with start_orthanc(tmp_path, http_port, pacs_port, node.port) as pacs:
        send_through_orthanc(pacs, node, slide, 3, 420)
        results = results_in_pacs(pacs, slide)
    (summary,) = [json.loads(row[0]) for row in node.query("SELECT result FROM jobs")]
    assert summary["slide"]["levels"][0][:2] == [50_176, 50_176]
    assert summary["peak_rss_mb"] < MAX_RSS_MB, summary["peak_rss_mb"]
    # tiles only where there is tissue: the two ellipses cover 3 % of the slide
    assert summary["slide"]["tiles_classified"] < 0.05 * summary["slide"]["tiles_total"]
    base = pydicom.dcmread(slide.files[0], stop_before_pixels=True)
    boxes = tile_boxes(results["ann"], base)
    centres = np.array([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
                        for items in boxes.values() for b in items])
    assert len(centres) == summary["slide"]["tiles_classified"]
    inside = in_tissue(centres[:, 0], centres[:, 1], 50_176)
    assert inside.mean() > 0.97, inside.mean()
    # the SEG lies on the 1/16 level (3,136 x 3,136 pixels, 8 µm)
    seg = hd.seg.Segmentation.from_dataset(results["seg"])
    assert (int(seg.TotalPixelMatrixRows), int(seg.TotalPixelMatrixColumns)) == (3136, 3136)


def test_triton_classifies_the_tiles_as_the_embedded_backend_does(
        tmp_path: Path, triton_grpc_url: str) -> None:
    """The same slide through the real tritonserver (make triton-up) and in-process."""
    slide = stained_slide(tmp_path / "slide")
    levels = check_pyramid(describe_slide([str(f) for f in slide.files]))
    model = load_model_spec(ROOT / "model_repository", "wsi_stain_density")
    results = {}
    for backend in (EmbeddedBackend(), TritonBackend(triton_grpc_url)):
        backend.check(model)
        results[backend.name] = run_slide_model(levels, model, backend)
        backend.close()
    embedded, triton = results["embedded"], results["triton"]
    assert len(embedded.boxes) > 30
    assert np.array_equal(embedded.boxes, triton.boxes)
    assert np.allclose(embedded.probabilities, triton.probabilities, atol=1e-5)
