"""Every shipped segmentation model's labels say what it marks, and no more (README: *Shipped
demonstration models*), checked on the shared data with the node's own output:

- ct_body_seg's "gas" is every gas inside the body: the lung bases and the bowel gas of this
  abdominal CT alike, so it is coded as the substance Gas, never as Lung; its "dense" is
  everything above 250 HU, bone and the iodinated contrast in the heart alike, so it is a
  Substance, never Bone; its "body" is the patient alone, one connected piece without the
  couch's edges and pads;
- mr_head_mask's "head" is one piece, and mr_brain_extraction's "brain" lies inside it;
- cxr_lung_seg's "lungs" are two fields, one each side of the film's midline, holding all but
  a sliver of what it marks (a patch of air above a shoulder may remain: README), and nothing
  at the film's edge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import ndimage

from node.imaging.volume import Volume, load_series
from node.infer.embedded import EmbeddedBackend
from node.infer.repository import load_model_spec
from node.infer.runner import run_model
from node.infer.segments import model_segments
from tests.support.deepbet_reference import MR_DIR
from tests.support.environment import CT_DIR, ROOT
from tests.support.radiographs import radiograph

pytestmark = pytest.mark.integration
REPOSITORY = ROOT / "model_repository"


def labelled(model: str, volume: Volume) -> tuple[NDArray[np.uint8], dict[str, int]]:
    """The node's label map for ``volume`` (embedded backend) and each label's value."""
    spec = load_model_spec(REPOSITORY, model)
    return (np.asarray(run_model(volume, spec, EmbeddedBackend()), np.uint8),
            {name: value for value, name in enumerate(spec.labels)})


def coded(model: str) -> dict[str, tuple[str, str]]:
    """label -> (category meaning, type code value) as the SEG and SR will carry them."""
    return {label: (meaning.category.meaning, meaning.type.value)
            for label, meaning in model_segments(load_model_spec(REPOSITORY, model)).items()}


def pieces(mask: NDArray[np.bool_]) -> list[int]:
    """Sizes of the 3-D (or 2-D) connected pieces of ``mask``, largest first."""
    found, count = ndimage.label(mask)
    return sorted(np.bincount(found.ravel())[1:].tolist(), reverse=True) if count else []


def test_ct_body_seg_names_gas_and_dense_matter_not_organs() -> None:
    volume = load_series(sorted(CT_DIR.glob("*.dcm")))
    labels, value = labelled("ct_body_seg", volume)
    assert coded("ct_body_seg") == {"body": ("Anatomical Structure", "38266002"),
                                    "gas": ("Body Substance", "74947009"),
                                    "dense": ("Substance", "105590001")}
    hu = volume.voxels
    cranial = volume.affine[2, 2] > 0  # slice k runs feet to head in this series
    lower_half = slice(0, labels.shape[0] // 2) if cranial else slice(labels.shape[0] // 2, None)
    gas = labels == value["gas"]
    # gas far below the lungs: bowel gas, in many separate pockets, so "gas" cannot be "lungs"
    assert gas[lower_half].sum() > 1000 and len(pieces(gas[lower_half])) >= 10, pieces(gas)[:5]
    dense = labels == value["dense"]
    # dense matter between 250 and 400 HU forms large pieces (contrast in the heart and great
    # vessels, trabecular bone): a threshold cannot tell them apart, so "dense" is not "bone"
    assert (hu[dense] < 400).mean() > 0.3
    # the patient is one piece; the couch's edges and pads beside it are not body
    body_pieces = pieces(labels > 0)
    assert len(body_pieces) == 1, body_pieces[:5]


def test_the_head_is_one_piece_and_the_brain_lies_inside_it() -> None:
    volume = load_series(sorted(MR_DIR.glob("*.dcm")))
    head, head_value = labelled("mr_head_mask", volume)
    brain, brain_value = labelled("mr_brain_extraction", volume)
    assert coded("mr_head_mask") == {"head": ("Anatomical Structure", "69536005")}
    assert coded("mr_brain_extraction") == {"brain": ("Anatomical Structure", "12738006")}
    head_mask, brain_mask = head == head_value["head"], brain == brain_value["brain"]
    assert len(pieces(head_mask)) == 1 and len(pieces(brain_mask)) == 1
    assert (brain_mask & head_mask).sum() >= 0.99 * brain_mask.sum()
    assert brain_mask.sum() < 0.5 * head_mask.sum()


def test_the_lung_fields_are_two_one_each_side(tmp_path: Path) -> None:
    volume = load_series([radiograph(tmp_path, "plain", "P-MEANINGS")])
    lungs, value = labelled("cxr_lung_seg", volume)
    assert coded("cxr_lung_seg") == {"lungs": ("Anatomical Structure", "39607008")}
    mask = lungs[0] == value["lungs"]
    found, _ = ndimage.label(mask)
    sizes = np.bincount(found.ravel())[1:]
    fields = np.argsort(sizes)[::-1][:2] + 1
    assert sizes[fields - 1].sum() >= 0.99 * mask.sum(), pieces(mask)
    middle = mask.shape[1] / 2
    centres = [float(np.mean(np.nonzero(found == field)[1])) for field in fields]
    assert min(centres) < middle < max(centres), centres
    assert min(sizes[fields - 1]) > 0.2 * mask.sum(), pieces(mask)
    edge = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    assert not edge.any(), "a lung field at the film's edge is air outside the body"
