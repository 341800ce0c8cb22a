"""Drive OHIF 3.13 in headless Debian Chromium with Playwright, and read back what it renders.

The browser is the system's `/usr/bin/chromium` (Playwright never downloads one here); WebGL2
runs on SwiftShader. Everything the viewer logs is kept: console errors, uncaught exceptions
and OHIF's error boundary (which reports through `console.debug("... Error Boundary")` and
shows "Something went wrong") are the viewer errors a test asserts are absent.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
WINDOW = {"width": 1400, "height": 900}

# OHIF may replace its viewport while it loads (e.g. while it hydrates a SEG), so every script
# that uses the viewport first waits, in the page, for one that shows an image (and, once a
# segmentation exists, draws it) and then acts within the same JavaScript turn: the viewport
# cannot go away between the check and the use.
READY_VIEWPORT = """
const readyViewport = async () => {
  const deadline = Date.now() + 60000;
  for (;;) {
    const elements = window.cornerstone ? cornerstone.getEnabledElements() : [];
    const viewport = elements.length ? elements[0].viewport : null;
    if (viewport && viewport.getCurrentImageId() && viewport.getImageData()) {
      const segmentations = cornerstoneTools.segmentation.state.getSegmentations();
      if (segmentations.length === 0 || cornerstoneTools.segmentation.state
          .getSegmentationRepresentations(viewport.id,
            {segmentationId: segmentations[0].segmentationId}).length > 0) {
        return viewport;
      }
    }
    if (Date.now() > deadline) throw new Error('no viewport showing its image for 60 s');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
};
"""

VIEWPORT_STATE = """async () => {""" + READY_VIEWPORT + """
  const viewport = await readyViewport();
  const imageId = viewport.getCurrentImageId();
  const rect = viewport.canvas.getBoundingClientRect();
  const imageData = viewport.getImageData().imageData;  // the displayed image's grid
  const corners = [[0, 0], [100, 0], [0, 100]].map(
    (p) => imageData.worldToIndex(viewport.canvasToWorld(p)).map((v) => v + 0.5));  // corners
  return {viewportId: viewport.id, imageId, index: viewport.getCurrentImageIdIndex(),
          count: viewport.getImageIds().length,
          rect: [rect.x, rect.y, rect.width, rect.height], corners};
}"""

# jump and render (also when already there: the image is then drawn anew, as for any other),
# until the viewport shows image `index` (again, should OHIF replace the viewport meanwhile)
JUMP = """async (index) => {""" + READY_VIEWPORT + """
  const deadline = Date.now() + 30000;
  let jumpedTo = null;
  for (;;) {
    const viewport = await readyViewport();
    if (jumpedTo === viewport && viewport.getCurrentImageIdIndex() === index) return;
    if (Date.now() > deadline) throw new Error('the viewport did not go to image ' + index);
    await cornerstone.utilities.jumpToSlice(viewport.element, {imageIndex: index});
    viewport.render();
    jumpedTo = viewport;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}"""

# The viewport's slice scrollbar (OHIF 3.13 ViewportSliceProgressScrollbar, a box with inline
# styles only) fills in as slices load and as they are viewed: viewer chrome over the canvas
# that changes between two captures of the same image, so it is hidden.
HIDE_PROGRESS = """div[style*="padding: 8px 5px"][style*="z-index: 10"] {
  visibility: hidden !important; }"""

SEGMENTATIONS = """() => cornerstoneTools.segmentation.state.getSegmentations().map((s) => ({
  id: s.segmentationId, label: s.label,
  segments: Object.fromEntries(Object.entries(s.segments).filter(([, v]) => v)
                               .map(([k, v]) => [k, v.label]))}))"""

SHOW_SEGMENTS = """async ([viewportId, segmentationId, visible]) => {""" + READY_VIEWPORT + """
  const viewport = await readyViewport();
  const visibility = cornerstoneTools.segmentation.config.visibility;
  const type = cornerstoneTools.Enums.SegmentationRepresentations.Labelmap;
  for (const [index, shown] of Object.entries(visible)) {
    visibility.setSegmentIndexVisibility(viewportId, {segmentationId, type}, Number(index), shown);
  }
  viewport.render();
}"""


@dataclass
class ViewportState:
    """Which image the viewport shows and how its canvas maps to that image's pixels."""

    viewport_id: str
    image_id: str
    index: int
    count: int
    rect: tuple[float, float, float, float]  # canvas on the page: x, y, width, height (CSS px)
    canvas_to_image: NDArray[np.float64]  # 2x3 affine: (x, y, 1) -> (column, row)

    @property
    def sop_instance_uid(self) -> str:
        return self.image_id.split("/instances/")[1].split("/")[0]

    @classmethod
    def from_page(cls, raw: dict[str, Any]) -> ViewportState:
        origin, along_x, along_y = (np.array(c[:2], dtype=np.float64) for c in raw["corners"])
        affine = np.column_stack([(along_x - origin) / 100, (along_y - origin) / 100, origin])
        return cls(raw["viewportId"], raw["imageId"], int(raw["index"]), int(raw["count"]),
                   tuple(raw["rect"]), affine)  # type: ignore[arg-type]

    def image_pixels(self, shape: tuple[int, int]) -> tuple[NDArray[np.intp], NDArray[np.intp],
                                                            NDArray[np.bool_]]:
        """For each canvas pixel centre: the image (row, column) under it, and whether it is
        inside an image of `shape` (rows, columns)."""
        height, width = round(self.rect[3]), round(self.rect[2])
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
        columns = self.canvas_to_image[0, 0] * xs + self.canvas_to_image[0, 1] * ys \
            + self.canvas_to_image[0, 2]
        rows = self.canvas_to_image[1, 0] * xs + self.canvas_to_image[1, 1] * ys \
            + self.canvas_to_image[1, 2]
        column_index, row_index = np.floor(columns).astype(np.intp), np.floor(rows).astype(np.intp)
        inside = (column_index >= 0) & (column_index < shape[1]) & (row_index >= 0) \
            & (row_index < shape[0])
        return np.clip(row_index, 0, shape[0] - 1), np.clip(column_index, 0, shape[1] - 1), inside


@dataclass
class OhifPage:
    page: Any  # playwright.sync_api.Page
    base_url: str
    artifacts: Path
    messages: list[str] = field(default_factory=list)

    def watch(self) -> None:
        def on_console(message: Any) -> None:
            self.messages.append(f"console.{message.type}: {message.text}")

        self.page.on("console", on_console)
        self.page.on("pageerror", lambda error: self.messages.append(f"pageerror: {error}"))

    def viewer_errors(self) -> list[str]:
        """Console errors, uncaught exceptions, and what OHIF's error boundary caught or shows."""
        errors = [m for m in self.messages
                  if m.startswith(("console.error", "pageerror")) or "Error Boundary" in m]
        if self.page.get_by_text("Something went wrong").count():
            errors.append("error boundary shown: Something went wrong")
        return errors

    def open(self, study_uid: str, series_uid: str) -> None:
        self.page.goto(f"{self.base_url}/viewer?StudyInstanceUIDs={study_uid}"
                       f"&initialSeriesInstanceUID={series_uid}")
        self.page.add_style_tag(content=HIDE_PROGRESS)

    def wait_for_viewport(self, timeout_s: float = 60) -> ViewportState:
        self.page.wait_for_function(
            "() => window.cornerstone && cornerstone.getEnabledElements().length > 0"
            " && cornerstone.getEnabledElements()[0].viewport.getCurrentImageId()"
            " && cornerstone.getEnabledElements()[0].viewport.getImageData()",
            timeout=timeout_s * 1000)
        return self.viewport()

    def viewport(self) -> ViewportState:
        return ViewportState.from_page(self.page.evaluate(VIEWPORT_STATE))

    def jump_to(self, index: int) -> ViewportState:
        self.page.evaluate(JUMP, index)
        return self.viewport()

    def hydrate_seg(self, study_uid: str, seg_series_uid: str) -> tuple[ViewportState,
                                                                         dict[str, Any]]:
        """Open a SEG series, accept OHIF's offer to load it over its images, and wait until
        the viewport draws it; the viewport's state and the segmentation."""
        self.open(study_uid, seg_series_uid)
        self.page.locator('[data-cy="yes-hydrate-btn"]').click(timeout=90_000)
        self.page.wait_for_function(
            "() => window.cornerstoneTools"
            " && cornerstoneTools.segmentation.state.getSegmentations().length > 0",
            timeout=90_000)
        return self.viewport(), self.segmentations()[0]  # a viewport that draws it

    def segmentations(self) -> list[dict[str, Any]]:
        return list(self.page.evaluate(SEGMENTATIONS))

    def show_segments(self, viewport_id: str, segmentation_id: str,
                      visible: dict[int, bool]) -> None:
        self.page.evaluate(SHOW_SEGMENTS, [viewport_id, segmentation_id,
                                           {str(k): v for k, v in visible.items()}])

    def canvas_pixels(self, state: ViewportState, settle_s: float = 10) -> NDArray[np.int16]:
        """RGB of the viewport canvas as rendered, once two consecutive captures agree."""
        x, y, width, height = state.rect
        clip = {"x": x, "y": y, "width": round(width), "height": round(height)}
        previous: NDArray[np.int16] | None = None
        deadline = time.monotonic() + settle_s
        while True:
            time.sleep(0.3)
            capture = np.asarray(Image.open(io.BytesIO(self.page.screenshot(clip=clip)))
                                 .convert("RGB"), dtype=np.int16)
            if previous is not None and np.array_equal(capture, previous):
                return capture
            if time.monotonic() > deadline:
                return capture
            previous = capture

    def save(self, name: str) -> Path:
        path = self.artifacts / name
        self.page.screenshot(path=str(path))
        return path


@contextmanager
def ohif_browser(base_url: str, artifacts: Path) -> Iterator[OhifPage]:
    """A fresh headless Chromium page on the OHIF site, with the onboarding tour marked seen."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=WINDOW)
            # else OHIF's onboarding popover covers the viewport
            context.add_init_script(
                "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))")
            page = OhifPage(context.new_page(), base_url, artifacts)
            page.watch()
            yield page
        finally:
            browser.close()


def share(part: NDArray[np.bool_], of: NDArray[np.bool_]) -> float:
    """Fraction of `of` that is also in `part` (1.0 when `of` is empty)."""
    return float((part & of).sum() / of.sum()) if of.any() else 1.0


def on_image(state: ViewportState, canvas_mask: NDArray[np.bool_],
             shape: tuple[int, int]) -> NDArray[np.bool_]:
    """The image pixels under any marked canvas pixel."""
    rows, columns, inside = state.image_pixels(shape)
    marked = np.zeros(shape, dtype=bool)
    keep = canvas_mask & inside
    marked[rows[keep], columns[keep]] = True
    return marked
