"""Findings -> standard DICOM: Segmentation, TID 1500 Comprehensive 3D SR, Secondary Capture."""

__all__ = ["common", "outputs", "rejection", "report", "sc", "seg", "sr"]
