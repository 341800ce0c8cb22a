"""A slide's results: Microscopy Bulk Simple Annotations, a tiled SEG and a TID 1500 SR.

- **ANN** (PS3.3 A.87): one annotation group per class found, each classified tile a POLYGON in
  the slide's Frame of Reference (3D slide coordinates, mm), with its class probability, its
  tissue share and its area as measurements; the tissue outline as a group of its own.
- **SEG** (PS3.3 A.51): BINARY, tiled on the total pixel matrix of one pyramid level (the
  finest of at most ``SEG_MAX_PIXELS``: its pixel spacing and origin), a segment per class: the
  tissue of each tile of that class. TILED_SPARSE (each frame's position given, empty frames
  left out) rather than TILED_FULL: dciodvfy (dicom3tools as packaged) does not know that
  TILED_FULL may omit the per-frame groups and reports every such SEG as an error.
- **SR** (TID 1500): planar ROI groups (TID 1410), each region a 3D polygon in the slide's
  Frame of Reference (what slide viewers draw, OHIF's microscopy mode among them): the slide's
  (the box around its tissue) with the tissue area in mm² and per class the share of the
  classified tissue (%) and its area, then each tissue region's outline and area.

Every object names the model and its version and says it is not for primary diagnosis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from skimage import measure as _measure

from node.encode.common import Provenance, header_only
from node.encode.seg import code, segment_descriptions
from node.encode.sr import SQUARE_MM, measurement_report
from node.imaging.slide import SlideLevel
from node.infer.tiles import TileResults
from node.settings import SegmentSpec

SEG_MAX_PIXELS = 25_000_000
SEG_TILE = 256
MAX_OUTLINE_POINTS = 512
MAX_SR_REGIONS = 20  # tissue regions outlined in the SR, largest first
MIN_SR_REGION_MM2 = 0.001  # smaller specks are counted in the tissue area, not outlined
PERCENT = Code("%", "UCUM", "percent")
NO_UNITS = Code("1", "UCUM", "no units")
TISSUE = Code("85756007", "SCT", "Tissue")
# the model's outputs have no standard concept: a private coding scheme (PS3.3 8.2)
PROBABILITY = Code("probability", "99AINODE", "Class probability")
TISSUE_SHARE = Code("tissue-share", "99AINODE", "Tissue fraction of tile")
measure: Any = _measure  # scikit-image is untyped


@dataclass(frozen=True)
class ClassSummary:
    label: str
    tiles: int
    share_percent: float  # of the classified tissue
    area_mm2: float  # tissue of its tiles


def seg_level(levels: list[SlideLevel]) -> SlideLevel:
    """The finest level (finest first) small enough to segment whole."""
    for level in levels:
        if level.pixels <= SEG_MAX_PIXELS:
            return level
    return levels[-1]


def class_map(results: TileResults, base: SlideLevel, level: SlideLevel) -> NDArray[np.uint8]:
    """[rows, columns] of ``level``: 1 + the class of the tile covering each tissue pixel, 0
    elsewhere (tiles in order; where tiles overlap, the later one's class)."""
    labels = np.zeros((level.rows, level.columns), dtype=np.uint8)
    tissue = results.tissue_map
    scale = (level.rows / base.rows, level.columns / base.columns)
    for box, label in zip(results.boxes, results.classes, strict=True):
        top, left = int(box[0] * scale[0]), int(box[1] * scale[1])
        bottom = min(int(np.ceil(box[2] * scale[0])), level.rows)
        right = min(int(np.ceil(box[3] * scale[1])), level.columns)
        if bottom <= top or right <= left:
            continue
        rows = np.minimum((np.arange(top, bottom) * tissue.level.rows / level.rows).astype(int),
                          tissue.level.rows - 1)
        columns = np.minimum(
            (np.arange(left, right) * tissue.level.columns / level.columns).astype(int),
            tissue.level.columns - 1)
        inside = tissue.mask[np.ix_(rows, columns)]
        block = labels[top:bottom, left:right]
        block[inside] = label + 1
    return labels


def summarise(results: TileResults, labels: tuple[str, ...],
              class_pixels: NDArray[np.uint8], level: SlideLevel) -> list[ClassSummary]:
    """Per class: tiles, share of the classified tissue and area (from the class map)."""
    pixel_area = level.spacing_mm[0] * level.spacing_mm[1]
    counts = [int(np.count_nonzero(class_pixels == value + 1)) for value in range(len(labels))]
    total = max(sum(counts), 1)
    tiles = np.bincount(results.classes, minlength=len(labels))
    return [ClassSummary(label, int(tiles[value]), round(100.0 * counts[value] / total, 2),
                         round(counts[value] * pixel_area, 4))
            for value, label in enumerate(labels)]


def _corners(boxes: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each box's four corners (column, row) as pixel indices of the base level: a pixel's
    centre is its index, so its top left corner is half a pixel before."""
    top, left, bottom, right = (boxes[:, i] - 0.5 for i in range(4))
    return np.stack([np.stack([left, top], 1), np.stack([right, top], 1),
                     np.stack([right, bottom], 1), np.stack([left, bottom], 1)], 1)


def _tissue_outlines(results: TileResults, base: SlideLevel) -> list[NDArray[np.float64]]:
    """The outline of each tissue region (base-level pixel indices, column, row)."""
    mask = np.pad(results.tissue_map.mask, 1).astype(np.float32)
    scale = (base.rows / results.tissue_map.level.rows,
             base.columns / results.tissue_map.level.columns)
    outlines = []
    for contour in measure.find_contours(mask, 0.5):
        if len(contour) < 8:
            continue
        step = max(1, len(contour) // MAX_OUTLINE_POINTS)
        points = (contour[::step][:-1] - 1 + 0.5)  # padded, and contours run between centres
        outlines.append(np.stack([points[:, 1] * scale[1] - 0.5,
                                  points[:, 0] * scale[0] - 0.5], 1))
    return outlines


def build_annotations(base_header: Dataset, results: TileResults, labels: tuple[str, ...],
                      segments: dict[str, SegmentSpec], provenance: Provenance) -> Dataset:
    """Microscopy Bulk Simple Annotations of the tiles (and tissue) in 3D slide coordinates."""
    source = header_only(base_header)
    to_slide = hd.spatial.ImageToReferenceTransformer.for_image(source,
                                                                for_total_pixel_matrix=True)
    tile_area = ((results.boxes[:, 2] - results.boxes[:, 0])
                 * (results.boxes[:, 3] - results.boxes[:, 1]))
    spacing = [float(v) for v in
               source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    algorithm = provenance.algorithm()
    groups: list[hd.ann.AnnotationGroup] = []
    corners = _corners(results.boxes)
    for value, label in enumerate(labels):
        chosen = np.flatnonzero(results.classes == value)
        if chosen.size == 0:
            continue
        spec = segments[label]
        polygons = [to_slide(corners[i]) for i in chosen]
        groups.append(hd.ann.AnnotationGroup(
            number=len(groups) + 1,
            uid=provenance.uid(f"ann-group-{label}"),
            label=f"{label} ({provenance.model_name})"[:64],
            annotated_property_category=code(spec.category),
            annotated_property_type=code(spec.type),
            graphic_type=hd.ann.GraphicTypeValues.POLYGON,
            graphic_data=polygons,
            algorithm_type=hd.ann.AnnotationGroupGenerationTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            measurements=[
                hd.ann.Measurements(PROBABILITY, results.probabilities[chosen, value]
                                    .astype(np.float32), NO_UNITS),
                hd.ann.Measurements(TISSUE_SHARE, results.tissue[chosen].astype(np.float32),
                                    NO_UNITS),
                hd.ann.Measurements(codes.SCT.Area, (tile_area[chosen] * spacing[0] * spacing[1])
                                    .astype(np.float32), SQUARE_MM),
            ],
            description=f"tiles classified {label}",
        ))
    outlines = _tissue_outlines(results, results.base_level)
    if outlines:
        groups.append(hd.ann.AnnotationGroup(
            number=len(groups) + 1,
            uid=provenance.uid("ann-group-tissue"),
            label="tissue",
            annotated_property_category=TISSUE,
            annotated_property_type=TISSUE,
            graphic_type=hd.ann.GraphicTypeValues.POLYGON,
            graphic_data=[to_slide(points) for points in outlines],
            algorithm_type=hd.ann.AnnotationGroupGenerationTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            description="tissue found on the lowest-resolution level",
        ))
    attributes = provenance.instance_attributes("ann")
    attributes.pop("contributing_equipment")
    dataset = hd.ann.MicroscopyBulkSimpleAnnotations(
        source_images=[source],
        annotation_coordinate_type=hd.ann.AnnotationCoordinateTypeValues.SCOORD3D,
        annotation_groups=groups,
        content_description=f"{provenance.model_name} {provenance.model_version}, "
                            "not for primary diagnosis"[:64],
        content_label="AI_TILES",
        **attributes,
        **provenance.device_attributes(),
    )
    return cast(Dataset, dataset)


def build_slide_seg(level_header: Dataset, class_pixels: NDArray[np.uint8],
                    labels: tuple[str, ...], segments: dict[str, SegmentSpec],
                    provenance: Provenance) -> Dataset | None:
    """A BINARY, TILED_FULL SEG on ``level_header``'s total pixel matrix: one segment per
    class present (None when no tile was classified)."""
    present = [value for value in range(len(labels))
               if np.any(class_pixels == value + 1)]
    if not present:
        return None
    renumbered = np.zeros(len(labels) + 1, dtype=np.uint8)
    for number, value in enumerate(present, start=1):
        renumbered[value + 1] = number
    names = [labels[value] for value in present]
    descriptions = segment_descriptions(names, [segments[name] for name in names], provenance,
                                        label_suffix=" tissue")
    pixels = renumbered[class_pixels][None]
    seg = hd.seg.Segmentation(
        source_images=[header_only(level_header)],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        content_description=f"{provenance.model_name} {provenance.model_version}, "
                            "not for primary diagnosis"[:64],
        content_label="AI_TILES",
        tile_pixel_array=True,
        tile_size=(SEG_TILE, SEG_TILE),
        dimension_organization_type=hd.DimensionOrganizationTypeValues.TILED_SPARSE,
        omit_empty_frames=True,
        **provenance.instance_attributes("seg"),
        **provenance.device_attributes(),
    )
    seg.PatientOrientation = ""  # Type 2C (General Image): a slide has no patient axes
    return cast(Dataset, seg)


def tissue_regions(results: TileResults, base_header: Dataset
                   ) -> list[tuple[NDArray[np.float64], float]]:
    """The largest tissue regions (at most ``MAX_SR_REGIONS``, none below
    ``MIN_SR_REGION_MM2``): each outline closed, in 3D slide coordinates (mm), and its area
    (mm², what the outline encloses)."""
    source = header_only(base_header)
    to_slide = hd.spatial.ImageToReferenceTransformer.for_image(source,
                                                                for_total_pixel_matrix=True)
    spacing = [float(v) for v in
               source.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    regions = []
    for outline in _tissue_outlines(results, results.base_level):
        columns, rows = outline[:, 0], outline[:, 1]
        pixels = 0.5 * abs(float(np.dot(columns, np.roll(rows, 1))
                                 - np.dot(rows, np.roll(columns, 1))))
        closed = np.vstack([outline, outline[:1]])
        regions.append((to_slide(closed), pixels * spacing[0] * spacing[1]))
    regions.sort(key=lambda region: -region[1])
    return [region for region in regions if region[1] >= MIN_SR_REGION_MM2][:MAX_SR_REGIONS]


def tissue_extent(results: TileResults, base_header: Dataset) -> NDArray[np.float64]:
    """The box around the slide's tissue (all of it when none was found) as a closed 3D polygon
    in slide coordinates (mm)."""
    mask = results.tissue_map.mask
    rows, columns = np.nonzero(mask) if mask.any() else (
        np.array([0, mask.shape[0] - 1]), np.array([0, mask.shape[1] - 1]))
    scale = (results.base_level.rows / mask.shape[0], results.base_level.columns / mask.shape[1])
    top, bottom = rows.min() * scale[0] - 0.5, (rows.max() + 1) * scale[0] - 0.5
    left, right = columns.min() * scale[1] - 0.5, (columns.max() + 1) * scale[1] - 0.5
    corners = np.array([[left, top], [right, top], [right, bottom], [left, bottom],
                        [left, top]], dtype=np.float64)
    to_slide = hd.spatial.ImageToReferenceTransformer.for_image(header_only(base_header),
                                                                for_total_pixel_matrix=True)
    extent: NDArray[np.float64] = to_slide(corners)
    return extent


def build_slide_sr(base_header: Dataset, evidence: list[Dataset], tissue_area_mm2: float,
                   summary: list[ClassSummary], regions: list[tuple[NDArray[np.float64], float]],
                   extent: NDArray[np.float64], provenance: Provenance) -> Dataset:
    """TID 1500 of TID 1410 planar ROI groups, each region a 3D polygon in the slide's Frame of
    Reference (what slide viewers draw; OHIF's microscopy mode needs an image region in every
    group): the slide's group first (``extent``: the box around its tissue; tissue area,
    share and area per class), then one per tissue region (its outline and area)."""
    source = header_only(base_header)
    algorithm = provenance.sr_algorithm()
    groups: list[Any] = []

    def region_group(name: str, polygon: NDArray[np.float64],
                     measurements: list[hd.sr.Measurement]) -> Any:
        """A TID 1410 group: the tissue within ``polygon`` (3D, the slide's Frame of
        Reference) and what was measured of it."""
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=provenance.uid(f"tracking-{name}"),
                identifier=f"{provenance.model_name} {name.replace('-', ' ')}"),
            referenced_region=hd.sr.ImageRegion3D(
                graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
                graphic_data=polygon,
                frame_of_reference_uid=source.FrameOfReferenceUID),
            finding_type=TISSUE,
            algorithm_id=algorithm,
            measurements=measurements,
        )

    for number, (outline, area) in enumerate(regions, start=1):
        groups.append(region_group(f"tissue-{number}", outline, [hd.sr.Measurement(
            codes.SCT.Area, round(area, 4), SQUARE_MM, algorithm_id=algorithm)]))
    measurements = [hd.sr.Measurement(codes.SCT.Area, round(tissue_area_mm2, 4), SQUARE_MM,
                                      algorithm_id=algorithm)]
    for item in summary:
        measurements.append(hd.sr.Measurement(
            Code(f"share-{item.label}"[:16], "99AINODE", f"Share of tissue: {item.label}"),
            item.share_percent, PERCENT, algorithm_id=algorithm))
        measurements.append(hd.sr.Measurement(
            Code(f"area-{item.label}"[:16], "99AINODE", f"Tissue area: {item.label}"),
            item.area_mm2, SQUARE_MM, algorithm_id=algorithm))
    group = region_group("slide", extent, measurements)
    return measurement_report([source], evidence, [group, *groups], provenance)
