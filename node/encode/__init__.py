"""Findings -> standard DICOM: Segmentation, TID 1500 Comprehensive 3D SR, Secondary Capture."""
