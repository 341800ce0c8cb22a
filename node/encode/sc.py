"""Secondary Capture with the overlay burned in, for viewers that cannot show SEG (PS3.3 A.8).

One RGB image of the source slice where the reported finding is largest: the slice in a
window for its modality, each label blended in its colour with an outline (a heatmap: its
colour blended in proportion to the probability, outlined where the finding counts as
present), and a banner
"AI RESULT - NOT FOR PRIMARY DIAGNOSIS" naming the model. Same study; its own series; the
source slice is named in Source Image Sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset

from node.encode.common import BANNER, Provenance

WINDOWS = {"CT": (-160.0, 240.0)}  # soft-tissue window; other modalities: min/max of the slice
ALPHA = 0.35
HEAT_ALPHA = 0.6


@dataclass(frozen=True)
class Layer:
    """One thing drawn over the image: a blend weight per pixel, an outline and a colour."""

    weight: NDArray[np.float32]  # [rows, columns], 0-1
    outline: NDArray[np.bool_]
    colour: tuple[int, int, int]


def _edge(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    inner = np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    edge: NDArray[np.bool_] = mask & ~inner
    return edge


def label_layers(labels: NDArray[np.uint8],
                 colours: dict[int, tuple[int, int, int]]) -> list[Layer]:
    """Each label present: blended at a fixed weight, outlined."""
    layers = []
    for value, colour in colours.items():
        mask = labels == value
        if mask.any():
            layers.append(Layer(mask.astype(np.float32) * ALPHA, _edge(mask), colour))
    return layers


def heat_layers(maps: list[tuple[NDArray[np.float32], tuple[int, int, int]]],
                threshold: float) -> list[Layer]:
    """Each probability map: blended in proportion to the probability, outlined where it
    reaches the threshold."""
    return [Layer(probability * HEAT_ALPHA, _edge(probability >= threshold), colour)
            for probability, colour in maps]


def _grey(intensities: NDArray[np.float32], modality: str) -> NDArray[np.uint8]:
    low, high = WINDOWS.get(modality, (float(intensities.min()), float(intensities.max())))
    scaled = (intensities - low) / max(high - low, 1e-6)
    grey: NDArray[np.uint8] = (np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    return grey


def render_overlay(
    intensities: NDArray[np.float32],
    layers: list[Layer],
    modality: str,
    caption: str,
) -> NDArray[np.uint8]:
    """RGB [rows, columns, 3]: grey image, the layers blended with outlines, banner on top."""
    grey = _grey(intensities, modality)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    for layer in layers:
        weight = layer.weight[..., None]
        rgb = (1 - weight) * rgb + weight * np.array(layer.colour, dtype=np.float32)
        rgb[layer.outline] = layer.colour
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    band = max(14, image.height // 24)
    font = ImageFont.load_default(size=max(10, int(band * 0.7)))  # legible on a 2k film too
    draw.rectangle([0, 0, image.width, band * 2], fill=(160, 0, 0))
    draw.text((6, 2), BANNER, fill=(255, 255, 255), font=font)
    draw.text((6, band), caption[:80], fill=(255, 255, 0), font=font)
    return np.asarray(image, dtype=np.uint8)


def _source_reference(source: Dataset) -> Dataset:
    """Source Image Sequence item: the slice this capture was rendered from (CID 7202)."""
    purpose = hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def build_sc(
    source: Dataset,
    intensities: NDArray[np.float32],
    layers: list[Layer],
    provenance: Provenance,
    caption: str,
) -> Dataset:
    """The Secondary Capture of one source slice."""
    pixels = render_overlay(intensities, layers, str(source.get("Modality", "")), caption)
    spacing = source.get("PixelSpacing")
    sc = cast(
        Dataset,
        hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            pixel_spacing=cast(Any, (float(spacing[0]), float(spacing[1]))) if spacing else None,
            patient_orientation=("L", "P"),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            **{
                **provenance.instance_attributes("sc"),
                "series_description": provenance.series_description("SC burned-in"),
            },
        ),
    )
    sc.BurnedInAnnotation = "YES"  # the banner and overlay are part of the pixels
    sc.SourceImageSequence = [_source_reference(source)]  # which slice is shown (PS3.3 C.7.6.1)
    if "Laterality" not in sc:
        sc.Laterality = None  # General Series, Type 2C: present, empty (unpaired structures)
    return sc
