"""In-process inference on the model repository's files (the default backend): ONNX models with
onnxruntime, TorchScript models (Triton's ``pytorch_libtorch`` platform) with torch (on the GPU
when the worker has one), and models in stages by their own ``model.py`` (see
:mod:`node.infer.repository`), whose networks run through this backend's sessions."""

from __future__ import annotations

import importlib.util
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import onnxruntime
import torch
from numpy.typing import NDArray

from node.infer.backend import InferenceFailed
from node.infer.repository import ModelConfigError, ModelSpec, load_model_spec

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
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        with torchscript_api():
            self._module: Any = torch.jit.load(  # type: ignore[no-untyped-call]
                str(model.model_file), map_location=self._device).eval()

    def run(self, tensor: NDArray[np.float32]) -> NDArray[np.generic]:
        try:
            with torch.inference_mode():
                output = self._module(torch.from_numpy(tensor).to(self._device))
        except RuntimeError as exc:
            raise InferenceFailed(str(exc)[:300]) from exc
        return np.asarray(output.cpu().numpy())


class _StagedSession:
    """A model in stages: its ``model.py`` ``run(image, infer)`` with ``infer`` calling each
    stage's network through ``stage`` (the backend's own sessions)."""

    def __init__(self, model: ModelSpec,
                 stage: Callable[[ModelSpec, NDArray[np.float32]], NDArray[np.generic]]) -> None:
        self._stages = {role: load_model_spec(model.repository, name)
                        for role, name in model.stages.items()}
        module_name = f"ainode_stages_{model.name}_{model.triton_version}"
        loader = importlib.util.spec_from_file_location(module_name, model.model_file)
        if loader is None or loader.loader is None:
            raise ModelConfigError(f"{model.name}: {model.model_file.name} cannot be loaded")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        run = getattr(module, "run", None)
        if not callable(run):
            raise ModelConfigError(f"{model.name}: {model.model_file.name} has no run(image, "
                                   "infer)")
        self._run: Callable[..., Any] = run
        self._stage = stage

    def check(self) -> list[ModelSpec]:
        return list(self._stages.values())

    def run(self, tensor: NDArray[np.float32]) -> NDArray[np.generic]:
        def infer(role: str, array: NDArray[np.float32]) -> NDArray[np.generic]:
            if role not in self._stages:
                raise InferenceFailed(f"no stage {role!r} in ainode_stages")
            return self._stage(self._stages[role], np.ascontiguousarray(array, np.float32))

        try:
            return np.asarray(self._run(tensor, infer))
        except (ValueError, IndexError, RuntimeError) as exc:  # the stage code's own refusal
            raise InferenceFailed(str(exc)[:300]) from exc


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
                self._sessions[key] = self._open(model)
            return self._sessions[key]

    def _open(self, model: ModelSpec) -> _Session:
        if model.stages:
            return _StagedSession(model, self.infer)
        if model.platform in TORCHSCRIPT_PLATFORMS:
            return _TorchScriptSession(model)
        return _OnnxSession(model, self._threads)

    def check(self, model: ModelSpec) -> None:
        session = self._session(model)
        if isinstance(session, _StagedSession):
            for stage in session.check():
                self.check(stage)

    def infer(self, model: ModelSpec, tensor: NDArray[np.float32]) -> NDArray[np.generic]:
        try:
            return self._session(model).run(tensor)
        except InferenceFailed as exc:
            raise InferenceFailed(f"{model.name}: {exc}"[:300]) from exc

    def close(self) -> None:
        with self._lock:
            self._sessions.clear()
