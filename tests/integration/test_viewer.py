"""What a radiologist sees: the node's SEG, SR and Secondary Capture in OHIF 3.13, in Chromium.

The real loop runs once for the module (Orthanc pushes the CT to `ainode serve`, the node
writes SEG + SR + SC back to Orthanc); OHIF reads them from Orthanc's DICOMweb on one origin.
Every check is made on the rendered pixels, mapped back to image pixels through the
viewport's own canvas -> world -> index transform, against the independent scipy reference
segmentation (tests/independent.py), never against the node's own output. Screenshots are
kept under $VIEWER_ARTIFACTS (a temporary directory otherwise).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from numpy.typing import NDArray
from scipy import ndimage

from tests.support.environment import CT_DIR, ct_files, free_port, require, wait_for
from tests.support.independent import body_gas_dense, read_ct
from tests.support.node import SEGMENTS, NodeProcess, ct_body_node_sections, write_config
from tests.support.ohif_page import CHROMIUM, OhifPage, ohif_browser, on_image, share
from tests.support.orthanc import start_orthanc
from tests.support.viewer_site import OHIF_DIST, ohif_site

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LABELS = {1: "body", 2: "gas", 3: "dense"}  # the reference's label values


@dataclass
class Loop:
    """The study as it ended up in Orthanc, the OHIF site, and the reference to judge it by."""

    site: str
    study_uid: str
    series: dict[str, str]  # modality -> Series Instance UID
    client: DICOMwebClient
    hu: NDArray[np.float32]
    reference: NDArray[np.uint8]  # [slice, row, column], slices ordered by z
    slice_of: dict[str, int]  # SOP Instance UID -> reference slice
    spacing_mm: tuple[float, float, float]  # slice, row, column
    artifacts: Path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    named = os.environ.get("VIEWER_ARTIFACTS")
    path = Path(named) if named else tmp_path_factory.mktemp("viewer-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    print(f"viewer screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[Loop]:
    require(CHROMIUM)
    require(str(OHIF_DIST / "index.html"))  # `make viewer-deps`
    tmp = tmp_path_factory.mktemp("viewer-loop")
    http_port, dicom_port, node_port = free_port(), free_port(), free_port()
    write_config(tmp / "node.yaml", node_port, tmp / "var", **ct_body_node_sections(dicom_port))
    node = NodeProcess(tmp / "node.yaml", tmp / "var", node_port, tmp / "node.log").start()
    try:
        with start_orthanc(tmp, http_port, dicom_port, node_port) as pacs:
            study = pacs.upload(ct_files())
            pacs.api("/modalities/ainode/store",
                     json.dumps({"Resources": [study], "Synchronous": True}))
            assert wait_for(lambda: len(node.query(
                "SELECT * FROM outbox WHERE state='sent'")) == 3, 180, 0.5), node.log()[-3000:]
            first = pydicom.dcmread(ct_files()[0], stop_before_pixels=True)
            series = {modality: found[0]["0020000E"]["Value"][0] for modality, found
                      in pacs.series_by_modality(str(first.StudyInstanceUID)).items()}
            assert {"CT", "SEG", "SR", "OT"} <= set(series), series
            hu, uids = read_ct(CT_DIR)
            row_mm, column_mm = (float(v) for v in first.PixelSpacing)
            with ohif_site(http_port) as site:
                yield Loop(site, str(first.StudyInstanceUID), series,
                           DICOMwebClient(pacs.dicomweb), hu,
                           body_gas_dense(hu), {u: i for i, u in enumerate(uids)},
                           (float(first.SliceThickness), row_mm, column_mm), artifacts)
    finally:
        node.stop()


@pytest.fixture
def ohif(loop: Loop, request: pytest.FixtureRequest) -> Iterator[OhifPage]:
    with ohif_browser(loop.site, loop.artifacts) as page:
        yield page
        errors = page.viewer_errors()
        page.save(f"{request.node.name}-end.png")
        assert not errors, "viewer errors:\n" + "\n".join(e[:500] for e in errors)






# --- SEG -------------------------------------------------------------------------------------


def test_viewer_shows_seg_overlay_on_the_anatomy_it_segments(loop: Loop, ohif: OhifPage) -> None:
    state, segmentation = ohif.hydrate_seg(loop.study_uid, loop.series["SEG"])
    segments = {int(k): v for k, v in segmentation["segments"].items()}
    assert sorted(segments.values()) == sorted(SEGMENTS), segmentation
    value_of = {label: value for value, label in LABELS.items()}

    viewport_id = state.viewport_id
    shape = loop.reference.shape[1:]
    report = []
    for name, index in {"top": 0, "middle": state.count // 2, "bottom": state.count - 1}.items():
        state = ohif.jump_to(index)
        z = loop.slice_of[state.sop_instance_uid]
        rows, columns, inside = state.image_pixels(shape)
        under = loop.reference[z][rows, columns]
        mirrored = loop.reference[z][:, ::-1][rows, columns]
        ohif.show_segments(viewport_id, segmentation["id"], dict.fromkeys(segments, False))
        plain = ohif.canvas_pixels(state)
        mirrored_precisions = []
        for number, label in segments.items():
            ohif.show_segments(viewport_id, segmentation["id"],
                               {n: n == number for n in segments})
            overlay = np.abs(ohif.canvas_pixels(state) - plain).sum(axis=2) > 30
            expected = (under == value_of[label]) & inside
            precision, recall = share(expected, overlay), share(overlay, expected)
            mirrored_precisions.append(share(mirrored == value_of[label], overlay))
            report.append(f"{name} (image {index}, z {z}) {label}: {overlay.sum()} px shown, "
                          f"{expected.sum()} expected, precision {precision:.3f}, "
                          f"recall {recall:.3f}, mirrored {mirrored_precisions[-1]:.3f}")
            if expected.sum() >= 100:
                assert precision >= 0.95 and recall >= 0.95, "\n".join(report)
            else:  # (almost) absent here: nothing substantial may be drawn
                assert overlay.sum() <= expected.sum() + 100, "\n".join(report)
        # the comparison can tell a left-right mirrored overlay from the right one
        assert min(mirrored_precisions) < 0.9, "\n".join(report)
        ohif.show_segments(viewport_id, segmentation["id"], dict.fromkeys(segments, True))
        ohif.canvas_pixels(state)
        saved = ohif.save(f"seg-{name}.png")
        if name == "middle" and os.environ.get("VIEWER_README_SCREENSHOT"):
            shutil.copyfile(saved, os.environ["VIEWER_README_SCREENSHOT"])  # README's picture
    print("\n".join(report))
    ohif.page.locator('[data-cy="panelSegmentation-btn"]').click()
    for label in SEGMENTS:  # the segmentation panel lists each segment by its label
        ohif.page.get_by_text(label, exact=True).first.wait_for(timeout=30_000)
    ohif.save("seg-panel.png")


# --- SR --------------------------------------------------------------------------------------


SR_MEASUREMENTS = """() => services.displaySetService.getActiveDisplaySets()
  .filter((d) => d.Modality === 'SR')
  .flatMap((d) => (d.measurements || []).map((m) => ({
    tracking: m.TrackingIdentifier, loaded: m.loaded, labels: m.labels,
    sop: m.ReferencedSOPInstanceUID})))"""


def largest_slice_region(mask: NDArray[np.bool_]) -> tuple[int, NDArray[np.bool_]]:
    """The slice where a 3-D mask is largest, and its largest connected region there with
    its holes filled (what an outline of that region encloses)."""
    z = int(np.argmax(mask.sum(axis=(1, 2))))
    regions, _ = ndimage.label(mask[z])
    largest = int(np.argmax(np.bincount(regions.ravel())[1:])) + 1
    return z, ndimage.binary_fill_holes(regions == largest)


def test_viewer_lists_sr_measurements_and_draws_their_outlines(loop: Loop,
                                                                ohif: OhifPage) -> None:
    ohif.open(loop.study_uid, loop.series["SR"])
    ohif.wait_for_viewport()
    ohif.page.wait_for_function(f"() => ({SR_MEASUREMENTS})().length > 0", timeout=90_000)
    measurements = ohif.page.evaluate(SR_MEASUREMENTS)
    slice_mm3 = float(np.prod(loop.spacing_mm))
    expected_outline: dict[int, list[NDArray[np.bool_]]] = {}
    assert len(measurements) == len(LABELS), measurements
    for value, label in LABELS.items():
        mask = loop.reference == value
        z, region = largest_slice_region(mask)
        expected_outline.setdefault(z, []).append(region)
        found = [m for m in measurements if m["tracking"].endswith(f" {label}")]
        assert len(found) == 1, measurements
        shown = {item["label"]: float(item["value"].split()[0]) for item in found[0]["labels"]}
        assert found[0]["loaded"], found  # attached to an image of the CT
        assert loop.slice_of[found[0]["sop"]] == z, (label, found[0]["sop"])
        assert shown["Volume"] == pytest.approx(mask.sum() * slice_mm3 / 1000, rel=2e-3)
        assert shown["Mean"] == pytest.approx(float(loop.hu[mask].mean()), abs=0.5)
        assert shown["Maximum"] == pytest.approx(float(loop.hu[mask].max()), abs=0.5)
        assert shown["Area"] == pytest.approx(
            region.sum() * loop.spacing_mm[1] * loop.spacing_mm[2], rel=2e-3)

    # the measurement text is drawn on the image: hide it to look at the outlines alone
    ohif.page.locator(".svg-layer text").first.wait_for(timeout=30_000)
    ohif.save("sr-measurement.png")
    text = " ".join(ohif.page.locator(".svg-layer text").all_text_contents())
    assert re.search(r"Volume: [\d.]+ ml", text) and "Area:" in text, text
    ohif.page.add_style_tag(content=".svg-layer text, .svg-layer line { display: none; }")
    shape = loop.reference.shape[1:]
    report = []
    seen: list[int] = []
    state = ohif.wait_for_viewport()
    for _ in measurements:  # the viewport's arrows step through the SR's measurements
        if seen:
            ohif.page.locator('[data-cy="viewport-action-arrows-right"]').click()
            ohif.page.wait_for_function(
                "(i) => cornerstone.getEnabledElements().length > 0 && cornerstone"
                ".getEnabledElements()[0].viewport.getCurrentImageIdIndex() !== i",
                arg=state.index, timeout=30_000)
        ohif.page.locator(".svg-layer polyline").first.wait_for(timeout=30_000)
        state = ohif.wait_for_viewport()
        z = loop.slice_of[state.sop_instance_uid]
        seen.append(z)
        assert z in expected_outline, f"an SR measurement is shown on slice {z}"
        pixels = ohif.canvas_pixels(state)
        # OHIF draws the active SR measurement green, the others yellow; the CT is grey
        outline = (pixels[..., 1] > 180) & (pixels[..., 2] < 100)
        drawn = on_image(state, outline, shape)
        boundary = np.zeros(shape, dtype=bool)
        for region in expected_outline[z]:
            boundary |= region & ~ndimage.binary_erosion(region)
        near_boundary = ndimage.binary_dilation(boundary, iterations=2)
        precision = share(near_boundary, drawn)
        recall = share(ndimage.binary_dilation(drawn, iterations=2), boundary)
        report.append(f"slice {z}: outline {drawn.sum()} px, precision {precision:.3f}, "
                      f"recall {recall:.3f}")
        assert drawn.sum() > 100 and precision >= 0.9 and recall >= 0.9, "\n".join(report)
        ohif.save(f"sr-outline-slice-{z}.png")
    assert set(seen) == set(expected_outline), (seen, sorted(expected_outline))
    print("\n".join(report))


# --- Secondary Capture -----------------------------------------------------------------------


def segment_of_colour(pixels: NDArray[np.int16]) -> NDArray[np.int8]:
    """Per pixel: the reference label whose colour was blended onto grey there (0 for grey).

    On a grey pixel g blended with colour c, (R-G, G-B) is proportional to c's (R-G, G-B)."""
    hue = np.stack([pixels[..., 0] - pixels[..., 1], pixels[..., 1] - pixels[..., 2]], axis=-1)
    strength = np.linalg.norm(hue, axis=-1)
    best = np.zeros(pixels.shape[:2], dtype=np.int8)
    best_score = np.full(pixels.shape[:2], 0.9)  # cosine similarity needed
    for value, label in LABELS.items():
        r, g, b = SEGMENTS[label]["color"]  # type: ignore[misc]
        direction = np.array([r - g, g - b], dtype=np.float64)
        score = (hue @ direction) / (np.linalg.norm(direction) * np.maximum(strength, 1e-9))
        better = (score > best_score) & (strength >= 20)
        best[better], best_score[better] = value, score[better]
    return best


def test_viewer_shows_the_secondary_capture_of_the_right_slice(loop: Loop,
                                                                ohif: OhifPage) -> None:
    capture = loop.client.retrieve_series(loop.study_uid, loop.series["OT"])[0]
    source_uid = str(capture.SourceImageSequence[0].ReferencedSOPInstanceUID)
    z = loop.slice_of[source_uid]
    # the node captures the slice where its most specific finding (dense, highest label) is largest
    assert z == int(np.argmax((loop.reference == 3).sum(axis=(1, 2))))

    ohif.open(loop.study_uid, loop.series["OT"])
    state = ohif.wait_for_viewport()
    assert state.sop_instance_uid == str(capture.SOPInstanceUID)
    pixels = ohif.canvas_pixels(state)
    ohif.save("sc.png")
    shape = (int(capture.Rows), int(capture.Columns))
    rows, columns, inside = state.image_pixels(shape)
    banner_rows = 2 * max(14, shape[0] // 24) + 2  # the red banner with its text
    judged = inside & (rows >= banner_rows)
    colour = segment_of_colour(pixels)
    report, precisions = [], {}
    others = [c for c in (z - 10, z + 10) if 0 <= c < len(loop.reference)]  # 30 mm away
    for candidate in sorted([z, *others]):
        under = loop.reference[candidate][rows, columns]
        for value, label in LABELS.items():
            shown = (colour == value) & judged
            expected = (under == value) & judged
            precisions[candidate, label] = precision = share(expected, shown)
            recall = share(shown, expected)
            report.append(f"slice {candidate}{' (captured)' if candidate == z else ''} "
                          f"{label}: {shown.sum()} px, precision {precision:.3f}, "
                          f"recall {recall:.3f}")
            if candidate == z and expected.sum() >= 100:
                assert precision >= 0.9 and recall >= 0.9, "\n".join(report)
    print("\n".join(report))
    for candidate, label in precisions:  # another slice's anatomy does not fit it as well
        if candidate != z and label == "dense":
            assert precisions[z, "dense"] > precisions[candidate, "dense"] + 0.1, "\n".join(report)

