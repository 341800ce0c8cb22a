"""In-process inference with onnxruntime on the model repository's ONNX files (the default)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import onnxruntime
from numpy.typing import NDArray

from node.infer.backend import InferenceFailed
from node.infer.repository import ModelSpec


class EmbeddedBackend:
    name = "embedded"

    def __init__(self, threads: int = 0) -> None:
        self._threads = threads
        self._sessions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _session(self, model: ModelSpec) -> Any:
        key = str(model.model_file)
        with self._lock:
            if key not in self._sessions:
                options = onnxruntime.SessionOptions()
                if self._threads:
                    options.intra_op_num_threads = self._threads
                self._sessions[key] = onnxruntime.InferenceSession(
                    key, options, providers=["CPUExecutionProvider"]
                )
            return self._sessions[key]

    def check(self, model: ModelSpec) -> None:
        self._session(model)

    def infer(self, model: ModelSpec, tensor: NDArray[np.float32]) -> NDArray[np.generic]:
        try:
            (output,) = self._session(model).run(
                [model.outputs[0].name], {model.inputs[0].name: tensor}
            )
        except (
            onnxruntime.capi.onnxruntime_pybind11_state.Fail,
            onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument,
        ) as exc:
            raise InferenceFailed(f"{model.name}: {exc}"[:300]) from exc
        return np.asarray(output)

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
