from __future__ import annotations

import logging
import warnings

import pytest

from node.logs import RedactQuotedValues


def test_library_messages_lose_quoted_values_and_ours_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """highdicom's person-name warning quotes the patient's name; routed through logging
    with the filter, the name is gone and the rest of the message stays."""
    caplog.set_level(logging.INFO)
    handler = caplog.handler
    handler.addFilter(RedactQuotedValues())
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn('The string "Doe-John_001" is unlikely to represent the intended '
                          "person name", UserWarning, stacklevel=1)
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Doe^Jane'")
        logging.getLogger("node.pipeline").info("job %d to %r", 3, "PACS")
    finally:
        logging.captureWarnings(False)
        handler.removeFilter(handler.filters[-1])
    text = caplog.text
    assert "Doe-John_001" not in text and "Doe^Jane" not in text
    assert 'The string "<redacted>" is unlikely' in text
    assert "job 3 to 'PACS'" in text
