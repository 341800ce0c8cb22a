"""What a person reads in a viewer's series list names the model and the notice."""

from __future__ import annotations

import pytest

from node.encode.common import Provenance


@pytest.mark.parametrize("model", ["cxr_mass_map", "mr_brain_extraction",
                                   "wholeBody_ct_segmentation_with_a_long_name"])
@pytest.mark.parametrize("kind", ["SEG", "SR", "SC burned-in"])
def test_series_description_keeps_the_version_and_notice_whole_within_lo(
        model: str, kind: str) -> None:
    text = Provenance(model, "0.2.3", "1.2.3", ("1.2.3.4",)).series_description(kind)
    assert len(text) <= 64  # LO
    assert text.endswith(f" 0.2.3 {kind}, not for primary diagnosis")
    assert text.startswith(f"AI {model[:12]}")
    if len(model) + len(kind) > 30:  # the name gives way, and says so
        assert "~ 0.2.3" in text
