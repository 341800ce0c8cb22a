"""The chest radiograph's and the head MR's SEG in OHIF 3.13 (Chromium): overlays checked on the
rendered pixels, mapped back to image pixels through the viewport's own transform, against the
independent scipy computations (tests/independent.py), never against the node's own output.

One loop for the module: both studies go Orthanc -> node (cxr-lungs, mr-head and the shipped
mr-brain pipelines, SEG only) -> Orthanc; OHIF reads them from Orthanc's DICOMweb on one origin.
The brain SEG (mr_brain_extraction, a real pretrained network) is checked against deepbet's own
mask (tests/support/deepbet_reference.py), mapped to the series' grid.

The film is the shared CR with a Pixel Spacing of 0.15 mm instead of its ``0\\0``: a SEG of a
film of unknown spacing has no Pixel Measures (both its attributes are conditional and neither
applies; dciodvfy agrees), and OHIF 3.13 reads that macro unconditionally and stops with
"Cannot destructure property 'SpacingBetweenSlices' of 'PixelMeasures'" (an OHIF defect; an
empty item does not help, as Orthanc's DICOMweb JSON drops it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray

from node.imaging.volume import load_series
from tests.support.deepbet_reference import MR_DIR, deepbet_reference, on_grid
from tests.support.dicom_checks import fetch
from tests.support.environment import free_port, require, wait_for
from tests.support.independent import head_mask, lung_fields, read_radiograph, read_series
from tests.support.node import NodeProcess, ct_body_node_sections, write_config
from tests.support.ohif_page import CHROMIUM, OhifPage, ohif_browser, on_image, share
from tests.support.orthanc import start_orthanc
from tests.support.radiographs import radiograph
from tests.support.viewer_site import OHIF_DIST, ohif_site

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Study:
    study_uid: str
    seg_series: str
    reference: NDArray[np.uint8]  # [image, row, column], the independent result
    image_of: dict[str, int]  # SOP Instance UID -> reference image


@dataclass
class Site:
    url: str
    studies: dict[str, Study]
    artifacts: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require(CHROMIUM)
    require(str(OHIF_DIST / "index.html"))  # `make viewer-deps`
    tmp = tmp_path_factory.mktemp("viewer-xr-mr")
    http_port, dicom_port, node_port = free_port(), free_port(), free_port()
    sections = ct_body_node_sections(dicom_port)
    sections["pipelines"] = [
        {"name": "cxr-lungs", "match": {"modality": "CR"}, "model": "cxr_lung_seg",
         "outputs": ["seg"], "destinations": ["PACS"]},
        {"name": "mr-head", "match": {"modality": "MR"}, "model": "mr_head_mask",
         "outputs": ["seg"], "destinations": ["PACS"]},
        {"name": "mr-brain", "match": {"modality": "MR"}, "model": "mr_brain_extraction",
         "outputs": ["seg"], "destinations": ["PACS"]},
    ]
    write_config(tmp / "node.yaml", node_port, tmp / "var", **sections)
    node = NodeProcess(tmp / "node.yaml", tmp / "var", node_port, tmp / "node.log").start()
    mr_files = sorted(MR_DIR.glob("*.dcm"))
    film = radiograph(tmp, "plain", "P-VIEWER", pixel_spacing="0.15\\0.15")
    image, cxr_uid = read_radiograph(film)
    mr_image, mr_uids = read_series(MR_DIR)
    volume = load_series(mr_files)
    brain = on_grid(deepbet_reference(tmp), volume.voxels.shape, volume.affine)
    brain_uids = [ref.sop_instance_uid for ref in volume.slices]
    try:
        with start_orthanc(tmp, http_port, dicom_port, node_port) as pacs:
            for files in ([film], mr_files):
                study = pacs.upload(files)
                pacs.api("/modalities/ainode/store",
                         json.dumps({"Resources": [study], "Synchronous": True}))
            assert wait_for(lambda: len(node.query(
                "SELECT * FROM outbox WHERE state='sent'")) == 3, 240, 0.5), node.log()[-3000:]
            studies = {}
            for name, first, label, reference, uids in (
                ("cxr", film, "lungs", lung_fields(image)[None], [cxr_uid]),
                ("mr", mr_files[0], "head", head_mask(mr_image), mr_uids),
                ("mr-brain", mr_files[0], "brain", brain, brain_uids),
            ):
                study_uid = str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
                studies[name] = Study(study_uid, seg_series(pacs, study_uid, label),
                                      reference, {u: i for i, u in enumerate(uids)})
            with ohif_site(http_port) as url:
                yield Site(url, studies, tmp)
    finally:
        node.stop()


def seg_series(pacs: Any, study_uid: str, label: str) -> str:
    """The study's SEG series whose one segment is ``label``."""
    (found,) = [series["0020000E"]["Value"][0]
                for series in pacs.series_by_modality(study_uid)["SEG"]
                if [s.SegmentLabel for s in fetch(pacs, study_uid, series)[0].SegmentSequence]
                == [label]]
    return str(found)


@pytest.fixture
def ohif(site: Site, request: pytest.FixtureRequest) -> Iterator[OhifPage]:
    with ohif_browser(site.url, site.artifacts) as page:
        yield page
        errors = page.viewer_errors()
        page.save(f"{request.node.name}-end.png")
        assert not errors, "viewer errors:\n" + "\n".join(e[:500] for e in errors)


@pytest.mark.parametrize(("study", "label"), [("mr", "head"), ("mr-brain", "brain")])
def test_viewer_shows_the_seg_overlay_where_the_reference_is(
    site: Site, ohif: OhifPage, study: str, label: str
) -> None:
    found = site.studies[study]
    state, segmentation = ohif.hydrate_seg(found.study_uid, found.seg_series)
    segments = {int(k): v for k, v in segmentation["segments"].items()}
    assert list(segments.values()) == [label], segmentation
    (number,) = segments
    viewport_id = state.viewport_id
    state = ohif.jump_to(state.count // 2)
    index = found.image_of[state.sop_instance_uid]
    shape = found.reference.shape[1:]
    ohif.show_segments(viewport_id, segmentation["id"], {number: False})
    plain = ohif.canvas_pixels(state)
    ohif.show_segments(viewport_id, segmentation["id"], {number: True})
    overlay = np.abs(ohif.canvas_pixels(state) - plain).sum(axis=2) > 30
    ohif.save(f"{study}-seg.png")
    rows, columns, inside = state.image_pixels(shape)
    expected = (found.reference[index][rows, columns] == 1) & inside
    mirrored = (found.reference[index][:, ::-1][rows, columns] == 1) & inside
    shown_on_image = on_image(state, overlay, shape)
    precision, recall = share(expected, overlay), share(overlay, expected)
    report = (f"{study} image {index}: {overlay.sum()} canvas px shown, {expected.sum()} "
              f"expected, precision {precision:.3f}, recall {recall:.3f}, mirrored precision "
              f"{share(mirrored, overlay):.3f}; {shown_on_image.sum()} image px under it")
    print(report)
    assert expected.sum() > 1000, report
    assert precision >= 0.95 and recall >= 0.95, report
    assert share(mirrored, overlay) < precision - 0.05, report  # the check can tell a flip


def test_viewer_cannot_yet_load_a_seg_of_a_radiograph(site: Site) -> None:
    """A known limitation of OHIF 3.13, kept as a test so that it is seen when it changes: its
    SEG loader (cornerstone ``createLabelmapsFromSegImageIds`` -> ``checkOrientation``) reads
    the Plane Orientation functional group unconditionally, which a SEG of a projection
    radiograph (no Image Plane module, no Frame of Reference) does not and must not have. The
    film's SEG is valid (dciodvfy, test_results) and radiograph viewers that read it get the
    overlay; in OHIF sites use the Secondary Capture (``peers[].results: [sc]``). When this
    test fails, OHIF can show it: turn it into an overlay check like the MR one."""
    found = site.studies["cxr"]
    with ohif_browser(site.url, site.artifacts) as page:
        with page.page.expect_event(  # Playwright's own wait, on the browser's console
            "console", predicate=lambda m: m.type == "error"
            and "reading 'ImageOrientationPatient'" in m.text and "checkOrientation" in m.text,
            timeout=90_000,
        ):
            page.open(found.study_uid, found.seg_series)
        page.save("cxr-seg-ohif-limitation.png")
