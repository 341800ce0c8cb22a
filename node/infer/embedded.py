"""In-process inference on the model repository's files (the default backend): ONNX models with
onnxruntime, TorchScript models (Triton's ``pytorch_libtorch`` platform) with torch."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import onnxruntime
import torch
from numpy.typing import NDArray

from node.infer.backend import InferenceFailed
from node.infer.repository import ModelSpec

TORCHSCRIPT_PLATFORMS = ("pytorch_libtorch", "pytorch")


@contextmanager
def torchscript_api() -> Iterator[None]:
    """torch.jit without its deprecation notice: TorchScript is what Triton's libtorch backend
    serves, so the node keeps reading and writing it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        yield


class _Session(Protocol):
    def run(self, tensor: NDArray[np.float32]) -> NDArray[np.generic]: ...


class _OnnxSession:
    def __init__(self, model: ModelSpec, threads: int) -> None:
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = onnxruntime.InferenceSession(
            str(model.model_file), options, providers=["CPUExecutionProvider"]
        )
        self._input, self._output = model.inputs[0].name, model.outputs[0].name

    def run(self, tensor: NDArray[np.float32]) -> NDArray[np.generic]:
        try:
            (output,) = self._session.run([self._output], {self._input: tensor})
        except (
            onnxruntime.capi.onnxruntime_pybind11_state.Fail,
            onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument,
        ) as exc:
            raise InferenceFailed(str(exc)[:300]) from exc
        return np.asarray(output)


class _TorchScriptSession:
    def __init__(self, model: ModelSpec) -> None:
        with torchscript_api():
            self._module: Any = torch.jit.load(  # type: ignore[no-untyped-call]
                str(model.model_file), map_location="cpu").eval()

    def run(self, tensor: NDArray[np.float32]) -> NDArray[np.generic]:
        try:
            with torch.inference_mode():
                output = self._module(torch.from_numpy(tensor))
        except RuntimeError as exc:
            raise InferenceFailed(str(exc)[:300]) from exc
        return np.asarray(output.numpy())


class EmbeddedBackend:
    name = "embedded"

    def __init__(self, threads: int = 0) -> None:
        self._threads = threads
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def _session(self, model: ModelSpec) -> _Session:
        key = str(model.model_file)
        with self._lock:
            if key not in self._sessions:
                self._sessions[key] = (
                    _TorchScriptSession(model) if model.platform in TORCHSCRIPT_PLATFORMS
                    else _OnnxSession(model, self._threads)
                )
            return self._sessions[key]

    def check(self, model: ModelSpec) -> None:
        self._session(model)

    def infer(self, model: ModelSpec, tensor: NDArray[np.float32]) -> NDArray[np.generic]:
        try:
            return self._session(model).run(tensor)
        except InferenceFailed as exc:
            raise InferenceFailed(f"{model.name}: {exc}"[:300]) from exc

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
