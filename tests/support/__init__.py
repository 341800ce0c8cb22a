"""Helpers the tests share: real peers (a node, Orthanc, Triton, PostgreSQL, OHIF in Chromium),
test data and independent reference computations. No fixtures here: those are in conftest.py."""
