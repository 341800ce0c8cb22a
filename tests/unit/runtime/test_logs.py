from __future__ import annotations

import logging
import warnings

import pytest

from node.runtime.logs import RedactQuotedValues


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
        logging.getLogger("node.jobs.orchestrator").info("job %d to %r", 3, "PACS")
    finally:
        logging.captureWarnings(False)
        handler.removeFilter(handler.filters[-1])
    text = caplog.text
    assert "Doe-John_001" not in text and "Doe^Jane" not in text
    assert 'The string "<redacted>" is unlikely' in text
    assert "job 3 to 'PACS'" in text


def test_a_peer_network_error_logged_by_pynetdicom_is_one_warning_line() -> None:
    from node.runtime.logs import QuietNetworkErrors

    try:
        raise TimeoutError("timed out")
    except TimeoutError:
        import sys

        stalled = logging.LogRecord("pynetdicom.dul", logging.ERROR, __file__, 1, "%s",
                                    ("timed out",), sys.exc_info())
        defect = logging.LogRecord("pynetdicom.dul", logging.ERROR, __file__, 1, "boom", (),
                                   (ValueError, ValueError("boom"), None))
    assert QuietNetworkErrors().filter(stalled) and QuietNetworkErrors().filter(defect)
    formatted = logging.Formatter("%(levelname)s %(message)s").format(stalled)
    assert formatted == "WARNING network error: TimeoutError: timed out"
    assert defect.exc_info is not None and defect.levelno == logging.ERROR  # others untouched


def test_json_lines_carry_the_indexed_fields_and_no_patient_value() -> None:
    """--log-format json: one object per line with time, level, role, logger, event and the
    job and series the message names; the patient's values are redacted as in text."""
    import io
    import json

    from pydicom import Dataset

    from node.runtime.logs import FILTERS, JsonFormatter, redacting

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("worker"))
    for kind in FILTERS:
        handler.addFilter(kind())
    logger = logging.getLogger("node.jobs.orchestrator")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    patient = Dataset()
    patient.PatientName, patient.PatientID = "Doe^Jane", "MRN-777123"
    try:
        with redacting(patient):
            logger.info("job %d (ct-body on ct_body_seg) done for series %s rev %d; %s", 12,
                        "1.2.840.113619.2.55.3", 2, "MRN-777123 Doe")
            try:
                raise ValueError("bad value for Doe^Jane")
            except ValueError:
                logger.exception("job 13 failed")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "info" and first["role"] == "worker"
    assert first["logger"] == "node.jobs.orchestrator"
    assert (first["job_id"], first["series_uid"], first["revision"]) == (
        12, "1.2.840.113619.2.55.3", 2)
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["job_id"] == 13 and "ValueError" in second["exception"]
    text = stream.getvalue()
    assert "MRN-777123" not in text and "Doe^Jane" not in text
