"""The model contract (config.pbtxt's ainode_* parameters) is validated like the settings:
a misspelt or ill-typed parameter is refused with its name, before any job runs."""

from __future__ import annotations

import pytest

from node.infer.contract import ContractError, model_parameters

BASE = {"ainode_labels": '["background", "body"]', "ainode_version": "1.2.0",
        "ainode_output_kind": "labels", "max_batch_size": "4"}


def test_a_valid_contract_reads_typed_values_and_ignores_other_tools_parameters() -> None:
    contract = model_parameters({**BASE, "ainode_threshold": "0.7",
                                 "ainode_segments": '{"body": {"color": [1, 2, 3]}}'}, "m")
    assert contract.labels == ("background", "body") and contract.findings == ("body",)
    assert contract.threshold == 0.7 and contract.version == "1.2.0"


@pytest.mark.parametrize(("parameters", "named"), [
    ({"ainode_treshold": "0.7"}, "ainode_treshold"),  # misspelt: not silently the default
    ({"ainode_layout": "ijk"}, "ainode_layout"),
    ({"ainode_threshold": "1.5"}, "ainode_threshold"),
    ({"ainode_preprocess": "[{not json"}, "ainode_preprocess is not valid JSON"),
    ({"ainode_segments": '{"lungs": {}}'}, "unknown labels lungs"),
])
def test_a_wrong_parameter_is_refused_by_name(parameters: dict[str, str], named: str) -> None:
    with pytest.raises(ContractError, match=named):
        model_parameters({**BASE, **parameters}, "ct_body_seg")


def test_a_whole_slide_model_says_how_it_tiles_and_is_a_tile_classifier() -> None:
    tiling = '{"magnification": 20, "tile_size": 256, "overlap": 32}'
    contract = model_parameters({**BASE, "ainode_labels": '["tumour", "stroma"]',
                                 "ainode_output_kind": "classification",
                                 "ainode_wsi": tiling}, "m")
    assert contract.wsi is not None and contract.wsi.spacing_mm == pytest.approx(0.0005)
    assert (contract.wsi.tile_size, contract.wsi.overlap, contract.wsi.tissue_only) == (
        256, 32, True)
    with pytest.raises(ContractError, match="ainode_wsi needs ainode_output_kind"):
        model_parameters({**BASE, "ainode_wsi": tiling}, "m")
    with pytest.raises(ContractError, match="overlap must be smaller"):
        model_parameters({**BASE, "ainode_output_kind": "classification",
                          "ainode_wsi": '{"tile_size": 64, "overlap": 64}'}, "m")
