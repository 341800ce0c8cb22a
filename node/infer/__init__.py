"""Models and where they run: the model repository and its contract (:mod:`.repository`,
:mod:`.segments`), the backend protocol (:mod:`.backend`), in-process ONNX Runtime
(:mod:`.embedded`), Triton (:mod:`.triton`) and the staged runner (:mod:`.runner`)."""

__all__ = ["backend", "embedded", "gpu_config", "repository", "runner", "segments", "triton"]
