"""Whole slides for the tests, built here (nothing large is committed).

- :func:`stained_slide`: a real stained tissue image (scikit-image's ``ihc.png``, human tissue,
  immunohistochemistry with a haematoxylin counterstain) on a glass-grey canvas, turned into a
  DICOM pyramid by ``OrthancWSIDicomizer`` (Debian ``orthanc-wsi``), 1 µm per pixel, with a
  Frame of Reference and its staining steps (haematoxylin, DAB) in the specimen description.
- :func:`large_slide`: a synthetic slide of at least 50,000 x 50,000 pixels, TILED_FULL, JPEG
  tiles (tissue tiles cut from the same real image, the rest glass), with a 1/16 level.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import skimage
from numpy.typing import NDArray
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from tests.support.environment import require

DICOMIZER = "/usr/bin/OrthancWSIDicomizer"
IHC_PNG = Path(skimage.__file__).parent / "data" / "ihc.png"
GLASS = 242  # the canvas grey around the tissue
CANVAS = 1536  # pixels, 1 µm each
TISSUE_BOX = (512, 640, 1024, 1152)  # rows, columns (end exclusive) of the tissue on it
STAINING = [  # TID 8004 staining step: haematoxylin and DAB (what the IHC image shows)
    ("111701", "DCM", "Processing type", "127790008", "SCT", "Staining"),
    ("424361007", "SCT", "Using substance", "12710003", "SCT", "hematoxylin stain"),
    ("424361007", "SCT", "Using substance", "2735005", "SCT", "3,3'-diaminobenzidine"),
]


@dataclass(frozen=True)
class Slide:
    files: list[Path]
    study_uid: str
    series_uid: str
    tissue_box: tuple[int, int, int, int]  # base level pixels (rows, columns), end exclusive


def ihc_image() -> NDArray[np.uint8]:
    return np.asarray(Image.open(IHC_PNG).convert("RGB"))


def _dataset_json(study_uid: str, series_uid: str, patient_id: str) -> dict[str, object]:
    steps = [{"ValueType": "CODE",
              "ConceptNameCodeSequence": [{"CodeValue": name, "CodingSchemeDesignator": scheme,
                                           "CodeMeaning": meaning}],
              "ConceptCodeSequence": [{"CodeValue": value, "CodingSchemeDesignator": vscheme,
                                       "CodeMeaning": vmeaning}]}
             for name, scheme, meaning, value, vscheme, vmeaning in STAINING]
    return {
        "PatientID": patient_id, "PatientName": "Slide^Test", "PatientBirthDate": "19700101",
        "PatientSex": "F", "StudyID": "1", "SeriesNumber": "1", "ReferringPhysicianName": "",
        "AccessionNumber": "WSI1", "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid, "FrameOfReferenceUID": generate_uid(),
        "PositionReferenceIndicator": "SLIDE_CORNER", "Manufacturer": "ainode tests",
        "ManufacturerModelName": "OrthancWSIDicomizer", "DeviceSerialNumber": "1",
        "SoftwareVersions": "1", "ImageType": "DERIVED\\PRIMARY\\VOLUME\\NONE",
        "FocusMethod": "AUTO", "ExtendedDepthOfField": "NO", "AcquisitionContextSequence": [],
        "AcquisitionDuration": "100", "ContainerIdentifier": "SLIDE-1",
        "IssuerOfTheContainerIdentifierSequence": [], "ContainerTypeCodeSequence": [
            {"CodeValue": "433466003", "CodingSchemeDesignator": "SCT",
             "CodeMeaning": "Microscope slide"}],
        "SpecimenDescriptionSequence": [{
            "SpecimenIdentifier": "S-1", "SpecimenUID": generate_uid(),
            "SpecimenShortDescription": "human tissue, IHC",
            "IssuerOfTheSpecimenIdentifierSequence": [],
            "SpecimenPreparationSequence": [
                {"SpecimenPreparationStepContentItemSequence": [
                    {"ValueType": "TEXT", "ConceptNameCodeSequence": [
                        {"CodeValue": "121041", "CodingSchemeDesignator": "DCM",
                         "CodeMeaning": "Specimen Identifier"}], "TextValue": "S-1"},
                    *steps]}]}],
        "SpecimenLabelInImage": "NO", "BurnedInAnnotation": "NO",
    }


def stained_slide(folder: Path, patient_id: str = "WSI-1") -> Slide:
    """The IHC image at rows 512-1023, columns 640-1151 of a 1536 x 1536 canvas, 3 levels."""
    require(DICOMIZER)
    folder.mkdir(parents=True, exist_ok=True)
    canvas = np.full((CANVAS, CANVAS, 3), GLASS, dtype=np.uint8)
    top, left, bottom, right = TISSUE_BOX
    canvas[top:bottom, left:right] = ihc_image()
    Image.fromarray(canvas).save(folder / "slide.png")
    study_uid, series_uid = generate_uid(), generate_uid()
    (folder / "dataset.json").write_text(json.dumps(
        _dataset_json(study_uid, series_uid, patient_id)))
    out = folder / "dicom"
    out.mkdir()
    size_mm = str(CANVAS / 1000)
    subprocess.run([DICOMIZER, "--dataset", str(folder / "dataset.json"), "--folder", str(out),
                    "--pyramid=1", "--levels=3", "--tile-width=256", "--tile-height=256",
                    "--compression=jpeg", f"--imaged-width={size_mm}",
                    f"--imaged-height={size_mm}", str(folder / "slide.png")],
                   check=True, capture_output=True, timeout=120)
    return Slide(sorted(out.glob("*.dcm")), study_uid, series_uid, TISSUE_BOX)


def _jpeg(rgb: NDArray[np.uint8]) -> bytes:
    buffer = BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90, subsampling=1)  # 4:2:2
    return buffer.getvalue()


def in_tissue(rows: NDArray[np.float64], columns: NDArray[np.float64],
              size: int) -> NDArray[np.bool_]:
    """The large slide's tissue: two ellipses (positions as fractions of its side)."""
    y, x = rows / size, columns / size
    first = ((y - 0.35) / 0.06) ** 2 + ((x - 0.30) / 0.10) ** 2 <= 1
    second = ((y - 0.70) / 0.05) ** 2 + ((x - 0.65) / 0.07) ** 2 <= 1
    return np.asarray(first | second)


def large_slide(folder: Path, template: Path, size: int = 50_176, tile: int = 256,
                spacing_um: float = 0.5) -> Slide:
    """A synthetic slide of ``size`` x ``size`` pixels: a base level and a 1/16 level, each
    one TILED_FULL instance (JPEG baseline tiles). ``template``: a slide instance (e.g. of
    :func:`stained_slide`) whose header the levels start from."""
    folder.mkdir(parents=True, exist_ok=True)
    header = pydicom.dcmread(template, stop_before_pixels=True)
    ihc = ihc_image()
    glass = _jpeg(np.full((tile, tile, 3), GLASS, dtype=np.uint8))
    tissue_tiles = [_jpeg(ihc[r:r + tile, c:c + tile]) for r in (0, 256) for c in (0, 256)]
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for number, factor in enumerate((1, 16), start=1):
        side = math.ceil(size / factor)
        per_side = math.ceil(side / tile)
        centres = (np.arange(per_side) * tile + tile / 2) * factor
        rows, columns = np.meshgrid(centres, centres, indexing="ij")
        tissue = in_tissue(rows, columns, size).ravel()
        if factor == 1:
            frames = [tissue_tiles[i % 4] if t else glass for i, t in enumerate(tissue)]
        else:  # the low level: tissue pixel by pixel, coloured as the IHC image's mean
            pixels = np.arange(per_side * tile, dtype=np.float64) * factor
            mask = in_tissue(pixels[:, None], pixels[None, :], size)
            colour = ihc.reshape(-1, 3).mean(axis=0).astype(np.uint8)
            image = np.where(mask[..., None], colour, np.uint8(GLASS)).astype(np.uint8)
            frames = [_jpeg(image[y:y + tile, x:x + tile])
                      for y in range(0, per_side * tile, tile)
                      for x in range(0, per_side * tile, tile)]
        dataset = pydicom.Dataset()
        dataset.update(header)
        dataset.file_meta = pydicom.dataset.FileMetaDataset(header.file_meta)
        dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        dataset.PhotometricInterpretation = "YBR_FULL_422"
        dataset.SamplesPerPixel, dataset.PlanarConfiguration = 3, 0
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
        dataset.PixelRepresentation = 0
        dataset.LossyImageCompression = "01"
        for keyword in ("PerFrameFunctionalGroupsSequence", "ConcatenationUID",
                        "SOPInstanceUIDOfConcatenationSource", "InConcatenationNumber",
                        "ConcatenationFrameOffsetNumber"):
            if keyword in dataset:
                delattr(dataset, keyword)
        uid = generate_uid()
        dataset.SOPInstanceUID = uid
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.InstanceNumber = number
        dataset.DimensionOrganizationType = "TILED_FULL"
        dataset.TotalPixelMatrixRows = dataset.TotalPixelMatrixColumns = side
        dataset.TotalPixelMatrixFocalPlanes = 1
        dataset.NumberOfOpticalPaths = 1
        dataset.Rows = dataset.Columns = tile
        dataset.NumberOfFrames = len(frames)
        dataset.ImagedVolumeWidth = dataset.ImagedVolumeHeight = size * spacing_um / 1000
        measures = dataset.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        measures.PixelSpacing = [spacing_um * factor / 1000] * 2
        if factor != 1:
            dataset.ImageType = ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
        dataset.PixelData = encapsulate(frames, has_bot=len(frames) < 60_000)
        dataset["PixelData"].VR = "OB"
        path = folder / f"level-{number}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files.append(path)
    return Slide(files, study_uid, series_uid, (0, 0, size, size))
