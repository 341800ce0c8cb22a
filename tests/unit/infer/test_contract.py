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
