"""MONAI bundles for tests: the shared Model Zoo configurations with weights made here.

The shared bundles have no weights (they cannot be downloaded here). ``with_weights`` copies one
to a temporary directory and saves ``models/model.pt`` from the bundle's own ``network_def`` with
a fixed seed. Random weights put almost every voxel in one class, which would make a comparison
meaningless; so the output layer's bias is set so that the classes split near the median of the
network's score on the real CT (the rest of the network stays random).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BUNDLES = SHARED / "monai-bundles"
CT_DIR = SHARED / "ct-abdomen"


def _output_bias(network: torch.nn.Module, channels: int) -> torch.nn.Parameter:
    biases = [p for n, p in network.named_parameters()
              if n.endswith("bias") and p.shape == (channels,)]
    return biases[-1]


def with_weights(name: str, into: Path, seed: int = 0,
                 calibration: torch.Tensor | None = None, weights: str = "model.pt") -> Path:
    """A copy of the shared bundle ``name`` in ``into`` with ``models/<weights>``."""
    target = into / name
    shutil.copytree(BUNDLES / name, target)
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    parser = ConfigParser()
    parser.read_config(str(target / "configs" / "inference.json"))
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def", instantiate=True).eval()
    if calibration is not None:
        with torch.inference_mode():
            scores = network(calibration)[0]
        channels = scores.shape[0]
        bias = _output_bias(network, channels)
        # put each foreground channel's median margin over the background at zero
        with torch.no_grad():
            for channel in range(1, channels):
                margin = (scores[channel] - scores[0]).flatten()
                bias[channel] -= float(np.median(margin.numpy()))
    (target / "models").mkdir(exist_ok=True)
    torch.save(network.state_dict(), target / "models" / weights)
    return target


def load_network(bundle: Path) -> torch.nn.Module:
    """A bundle's ``network_def`` with its ``models/model.pt``, in eval mode."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def", instantiate=True)
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    return network.eval()


def spleen_calibration(voxels: np.ndarray) -> torch.Tensor:
    """A 96^3 block of the CT in the spleen bundle's intensity window ([-57, 164] HU -> [0, 1]),
    [x, y, z] as the bundle's network sees it."""
    block = np.clip((voxels[30:126, 200:296, 300:396] + 57.0) / 221.0, 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(block.transpose(2, 1, 0)))[None, None].float()


def run_bundle_inference(bundle: Path, dicom_dir: Path, out_dir: Path,
                         overrides: dict[str, object] | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's own inference: its inference.json through MONAI's bundle machinery
    (``initialize`` loads the checkpoint, ``run`` runs its evaluator with its preprocessing,
    inferer and postprocessing, SaveImaged writes NIfTI). Only the data source is changed: the
    DICOM folder read by MONAI's PydicomReader. Returns the saved label map and its affine."""
    import nibabel

    with warnings.catch_warnings():  # MONAI's notices (deprecated keys, no CUDA for amp)
        warnings.simplefilter("ignore")
        parser = ConfigParser()
        parser.read_meta(str(bundle / "configs" / "metadata.json"))
        parser.read_config(str(bundle / "configs" / "inference.json"))
        parser["bundle_root"] = str(bundle)
        for key, value in (overrides or {}).items():
            parser[key] = value
        parser["datalist"] = [str(dicom_dir)]
        parser["preprocessing"]["transforms"][0]["reader"] = "PydicomReader"
        parser["dataloader"]["num_workers"] = 0
        parser["output_dir"] = str(out_dir)
        parser.get_parsed_content("initialize")
        parser.get_parsed_content("run")
    (saved,) = out_dir.rglob("*.nii.gz")
    image = nibabel.load(saved)
    return np.asarray(image.dataobj), np.asarray(image.affine)


def on_node_grid(array: np.ndarray, affine: np.ndarray, volume_affine_lps: np.ndarray
                 ) -> np.ndarray:
    """A RAS-affine [x, y, z] array (NIfTI) re-oriented onto the node's [k, j, i] voxel grid,
    by the two affines alone (the grids must coincide up to axis order and direction)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    node_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume_affine_lps  # axes i, j, k
    transform = ornt_transform(io_orientation(affine), io_orientation(node_ras))
    reoriented = apply_orientation(array, transform)
    moved = affine @ inv_ornt_aff(transform, array.shape)
    assert np.allclose(moved, node_ras, atol=1e-3), (moved, node_ras)
    return np.asarray(reoriented).transpose(2, 1, 0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))
