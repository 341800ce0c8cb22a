"""DICOM plumbing shared by every stage: Part 10 files (:mod:`.files`), DICOM TLS contexts
(:mod:`.tls`), the SCU that C-ECHOes and C-STOREs to a peer (:mod:`.scu`), STOW-RS out
(:mod:`.stow`) and a DICOMweb client with a peer's credentials (:mod:`.dicomweb`)."""

__all__ = ["dicomweb", "files", "scu", "stow", "tls"]
