"""Series -> volume on the real shared data, including every geometry failure case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from node.imaging.volume import VolumeError, load_series

DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
BAD = DATA / "bad-input"


def files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.dcm"))


def test_ct_is_sorted_along_the_normal_with_a_patient_affine() -> None:
    paths = files(DATA / "ct-abdomen")
    shuffled = paths[::-1][:67] + paths[::-1][67:]
    volume = load_series(shuffled[::2] + shuffled[1::2])  # arrival order must not matter
    assert volume.voxels.shape == (134, 512, 512)
    first, last = pydicom.dcmread(paths[-1]), pydicom.dcmread(paths[0])  # z ascends
    assert volume.slices[0].sop_instance_uid == first.SOPInstanceUID
    assert volume.slices[-1].sop_instance_uid == last.SOPInstanceUID
    np.testing.assert_allclose(volume.affine[:3, 3], [float(v) for v in first.ImagePositionPatient])
    corner = volume.affine @ np.array([511, 511, 133, 1.0])
    expected = np.array([float(v) for v in last.ImagePositionPatient]) + 511 * np.array(
        [float(last.PixelSpacing[1]), float(last.PixelSpacing[0]), 0])
    np.testing.assert_allclose(corner[:3], expected, atol=1e-6)
    assert volume.spacing == pytest.approx((3.0, float(first.PixelSpacing[0]),
                                            float(first.PixelSpacing[1])))
    raw = first.pixel_array.astype(np.float32) * float(first.RescaleSlope) + float(
        first.RescaleIntercept)
    np.testing.assert_array_equal(volume.voxels[0], raw)


@pytest.mark.parametrize(
    ("folder", "reason"),
    [
        ("dicom2nifti_failing/sliceincrement/001", "missing slices or non-uniform spacing"),
        ("dicom2nifti_failing/sliceincrement/002", "gantry tilt"),
        ("dicom2nifti_failing/sliceorientation/001", "mixed orientation"),
        ("dicom2nifti_failing/slicecount/001", "too few slices"),
        ("dicom2nifti_failing/notavolume/001", "duplicate slice positions"),
        ("dicom2nifti_failing/gantrytilting/001", "gantry tilt"),
        ("dicom-numpy_dupe-positions", "duplicate slice positions"),
        ("dcm_qa_ct/GE_headCT_tilt_varspacing", "gantry tilt"),
    ],
)
def test_geometry_cases_are_refused_with_a_reason(folder: str, reason: str) -> None:
    with pytest.raises(VolumeError) as excinfo:
        load_series(files(BAD / folder))
    assert reason in excinfo.value.reason


def test_compressed_monochrome1_radiograph_decodes_and_is_inverted() -> None:
    path = DATA / "cxr" / "RG1_JLSN.dcm"
    dataset = pydicom.dcmread(path)
    assert dataset.PhotometricInterpretation == "MONOCHROME1"
    dataset.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]  # projection images have none
    dataset.ImagePositionPatient = [0, 0, 0]
    raw = dataset.pixel_array.astype(np.float32)
    from node.imaging import volume as module

    planes = module._planes(dataset)
    assert len(planes) == 1
    np.testing.assert_array_equal(planes[0].pixels, raw.max() + raw.min() - raw)


def test_undecodable_pixel_data_is_a_clear_error(tmp_path: Path) -> None:
    source = pydicom.dcmread(DATA / "ct-abdomen" / "1-001.dcm")
    source.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # claims JPEG, holds raw
    source.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 100])  # not a JPEG stream
    source["PixelData"].VR = "OB"
    broken = tmp_path / "broken.dcm"
    source.save_as(broken)
    with pytest.raises(VolumeError, match=r"cannot be (decoded|read)"):
        load_series([broken], min_slices=1)


def test_enhanced_multiframe_equals_its_single_frame_series() -> None:
    """The dcmqi sample ships one image both as 3 CT files and as a Legacy Converted Enhanced
    CT multi-frame: same voxels, same affine, one slice per frame."""
    folder = DATA / "reference" / "dcmqi_data" / "segmentations" / "24x38x3"
    multi = load_series([folder / "multiframe" / "mf.dcm"])
    single = load_series(files(folder / "image"))
    assert multi.voxels.shape == single.voxels.shape == (3, 38, 24)
    np.testing.assert_array_equal(multi.voxels, single.voxels)
    np.testing.assert_allclose(multi.affine, single.affine, atol=1e-6)
    assert [s.frame_number for s in multi.slices] == [1, 2, 3]
