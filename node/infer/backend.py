"""The Backend protocol: run one model on one input tensor. Two implementations share it:
:mod:`node.infer.embedded` (onnxruntime in-process) and :mod:`node.infer.triton`."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from node.infer.repository import ModelSpec


class BackendUnavailable(ConnectionError):
    """The backend cannot be reached or is not ready: the job should be retried later."""


class InferenceFailed(RuntimeError):
    """The backend answered with an error for this input: retrying will not help."""


class Backend(Protocol):
    name: str

    def check(self, model: ModelSpec) -> None:
        """Raise ModelNotFound / BackendUnavailable unless ``model`` is ready to serve."""

    def infer(self, model: ModelSpec, tensor: NDArray[np.float32]) -> NDArray[np.generic]:
        """Run the model on its single input; return its single output."""

    def close(self) -> None:
        """Release connections and shared memory."""
