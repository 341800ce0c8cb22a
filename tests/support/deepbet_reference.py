"""deepbet's own answer on the shared head MR, the reference for mr_brain_extraction: the series
converted by dcm2niix and run through deepbet's ``run_bet`` (its Python API, in a separate
process), and the mapping between its RAS voxel order and a DICOM volume's grid."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray

from node.infer.runner import LPS_TO_RAS
from tests.support.environment import CT_DIR, require

MR_DIR = CT_DIR.parent / "mr-brain"
DCM2NIIX = "/usr/bin/dcm2niix"


@dataclass(frozen=True)
class Reference:
    """deepbet's own answer: the mask in RAS voxel order (nibabel's closest canonical), its
    affine, and the volume it reports (``tiv_cm3``, ml)."""

    mask: NDArray[np.bool_]
    affine: NDArray[np.float64]
    volume_ml: float


def deepbet_reference(folder: Path, series: Path = MR_DIR) -> Reference:
    """dcm2niix, then deepbet's ``run_bet`` on the CPU; files are written under ``folder``."""
    require(DCM2NIIX)
    subprocess.run([DCM2NIIX, "-z", "y", "-f", "head", "-o", str(folder), str(series)],
                   check=True, capture_output=True, timeout=120)
    script = ("import sys; from deepbet import run_bet; "
              "run_bet([sys.argv[1]], mask_paths=[sys.argv[2]], tiv_paths=[sys.argv[3]], "
              "no_gpu=True)")
    subprocess.run([sys.executable, "-W", "ignore", "-c", script, str(folder / "head.nii.gz"),
                    str(folder / "mask.nii.gz"), str(folder / "tiv.csv")],
                   check=True, capture_output=True, timeout=300)
    mask = nib.as_closest_canonical(nib.load(folder / "mask.nii.gz"))
    tiv = float((folder / "tiv.csv").read_text().splitlines()[1].split(",")[1])
    return Reference(np.asarray(mask.dataobj) > 0, mask.affine, tiv)


def to_ras(values: NDArray[Any], affine_lps: NDArray[np.float64]) -> tuple[NDArray[Any],
                                                                          NDArray[np.float64]]:
    """Values on a volume's grid ([k, j, i], LPS affine) in RAS voxel order, as deepbet's."""
    image = nib.Nifti1Image(np.ascontiguousarray(values.transpose(2, 1, 0)),
                            LPS_TO_RAS @ affine_lps)
    canonical = nib.as_closest_canonical(image)
    return np.asarray(canonical.dataobj), canonical.affine


def in_ras(labels: NDArray[Any], affine_lps: NDArray[np.float64]) -> tuple[NDArray[np.bool_],
                                                                            NDArray[np.float64]]:
    """A label map on a volume's grid in RAS voxel order, as a mask."""
    values, affine = to_ras(labels.astype(np.uint8), affine_lps)
    return values > 0, affine


def on_grid(reference: Reference, shape: tuple[int, ...],
            affine_lps: NDArray[np.float64]) -> NDArray[np.uint8]:
    """deepbet's mask on a DICOM volume's grid ([k, j, i] of ``shape``, LPS affine): each voxel
    of the grid finds its place in deepbet's RAS array (the same voxels, reordered)."""
    index = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    where, affine = to_ras(index, affine_lps)
    assert np.allclose(affine, reference.affine, atol=1e-2), (affine, reference.affine)
    grid = np.zeros(index.size, np.uint8)
    grid[where.ravel()] = reference.mask.ravel()
    return grid.reshape(shape)
