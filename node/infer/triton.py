"""Inference on NVIDIA Triton Inference Server with tritonclient (gRPC by default, or HTTP).

Binary tensors always; optionally system shared memory when the server runs on this host (the
tensors then never cross the socket). Every worker thread has its own client and its own
shared-memory regions (named after the process, the thread and a counter), so concurrent jobs
never read or overwrite each other's tensors: one patient's image can never be encoded with
another's label map. The registry of all threads' connections is guarded by a lock.

Requests that fail because the server is unreachable or not ready are retried with exponential
backoff, then reported as :class:`BackendUnavailable` so the job is retried later; a model
the server does not know is :class:`ModelNotFound`.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from node.infer.backend import BackendUnavailable, InferenceFailed
from node.infer.repository import ModelNotFound, ModelSpec
from node.runtime import metrics

log = logging.getLogger(__name__)

_NUMPY_TYPES = {
    "FP32": np.float32,
    "FP16": np.float16,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
}
_UNAVAILABLE_MARKERS = (
    "unavailable",
    "failed to connect",
    "connection refused",
    "deadline",
    "timed out",
    "socket closed",
    "not ready",
    "broken pipe",
)


def _unavailable(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _UNAVAILABLE_MARKERS)


@dataclass
class _Connection:
    """One worker thread's client and shared-memory regions (by role: ``in``, ``out``)."""

    client: Any
    regions: dict[str, tuple[str, Any, int]] = field(default_factory=dict)


_region_numbers = itertools.count()


class TritonBackend:
    name = "triton"

    def __init__(
        self,
        url: str,
        protocol: str = "grpc",
        timeout_s: float = 300,
        retries: int = 3,
        shared_memory: bool = False,
    ) -> None:
        self._protocol = protocol
        self._timeout_s = timeout_s
        self._retries = retries
        self._shared_memory = shared_memory
        self._url = url.removeprefix("grpc://").removeprefix("http://")
        if protocol == "grpc":
            import tritonclient.grpc as client_module
        else:
            import tritonclient.http as client_module
        self._module: Any = client_module
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []

    def _new_client(self) -> Any:
        if self._protocol == "grpc":
            return self._module.InferenceServerClient(self._url)
        return self._module.InferenceServerClient(
            self._url, connection_timeout=self._timeout_s, network_timeout=self._timeout_s
        )

    @property
    def _connection(self) -> _Connection:
        """This thread's connection (made on first use)."""
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = _Connection(self._new_client())
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    @property
    def _client(self) -> Any:
        return self._connection.client

    def _reconnect(self) -> None:
        """A fresh channel for this thread (gRPC backs off reconnecting for up to minutes)
        and, since a restarted server has forgotten them, fresh shared-memory registrations.
        Other threads' connections are left alone."""
        from tritonclient.utils import shared_memory as shm

        connection = self._connection
        for _name, handle, _size in connection.regions.values():
            shm.destroy_shared_memory_region(handle)
        connection.regions.clear()
        try:
            connection.client.close()
        except Exception as exc:  # a broken channel may fail to close; it is dropped anyway
            log.debug("closing the old Triton client failed: %s", exc)
        connection.client = self._new_client()

    # -- readiness -------------------------------------------------------------------------
    def server_ready(self) -> bool:
        """Triton's readiness (``/v2/health/ready``) within the timeout;
        :class:`BackendUnavailable` when it cannot be reached."""
        kwargs = {"client_timeout": self._timeout_s} if self._protocol == "grpc" else {}
        try:
            return bool(self._client.is_server_ready(**kwargs))
        except Exception as exc:  # gRPC status or a refused HTTP connection alike
            raise BackendUnavailable(f"Triton at {self._url}: {exc}") from exc

    def model_ready(self, name: str) -> bool:
        """Whether Triton has ``name`` loaded and ready; :class:`BackendUnavailable` when it
        cannot be reached."""
        try:
            return bool(self._client.is_model_ready(name))
        except Exception as exc:
            raise BackendUnavailable(f"Triton at {self._url}: {exc}") from exc

    def check(self, model: ModelSpec) -> None:
        """Server live and ready, model known and ready, metadata matching the repository."""
        from tritonclient.utils import InferenceServerException

        try:
            if not self._client.is_server_ready():
                raise BackendUnavailable(f"Triton at {self._url} is not ready")
            version = str(model.triton_version)
            if not self._client.is_model_ready(model.name, version):
                raise ModelNotFound(f"Triton at {self._url} has no ready model {model.name!r} "
                                    f"version {version} (version_policy in its config.pbtxt)")
            metadata = self._client.get_model_metadata(model.name, version)
        except InferenceServerException as exc:
            message = str(exc)
            if "unknown model" in message.lower() or "not found" in message.lower():
                raise ModelNotFound(f"Triton: {message}") from exc
            self._reconnect()
            raise BackendUnavailable(f"Triton at {self._url}: {message}") from exc
        names = self._tensor_names(metadata)
        expected = ({t.name for t in model.inputs}, {t.name for t in model.outputs})
        if names != expected:
            raise ModelNotFound(
                f"Triton's {model.name!r} has tensors {names}, the repository says {expected}"
            )

    def _tensor_names(self, metadata: Any) -> tuple[set[str], set[str]]:
        if isinstance(metadata, dict):  # HTTP client returns JSON
            return (
                {t["name"] for t in metadata["inputs"]},
                {t["name"] for t in metadata["outputs"]},
            )
        return {t.name for t in metadata.inputs}, {t.name for t in metadata.outputs}

    # -- inference -------------------------------------------------------------------------
    def infer(self, model: ModelSpec, tensor: NDArray[np.float32]) -> NDArray[np.generic]:
        from tritonclient.utils import InferenceServerException

        delay = 0.5
        for attempt in range(self._retries + 1):
            try:
                return self._infer_once(model, tensor)
            except InferenceServerException as exc:
                message = str(exc)
                if "unknown model" in message.lower():
                    raise ModelNotFound(f"Triton: {message}") from exc
                if not _unavailable(message):
                    raise InferenceFailed(f"Triton: {message}"[:300]) from exc
                self._reconnect()
                if attempt == self._retries:
                    raise BackendUnavailable(f"Triton at {self._url}: {message}"[:300]) from exc
                log.warning(
                    "Triton unavailable (%s); retry %d in %.1f s", message[:80], attempt + 1, delay
                )
            except (ConnectionError, OSError) as exc:
                self._reconnect()
                if attempt == self._retries:
                    raise BackendUnavailable(f"Triton at {self._url}: {exc}") from exc
                log.warning("Triton unreachable (%s); retry %d in %.1f s", exc, attempt + 1, delay)
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _infer_once(self, model: ModelSpec, tensor: NDArray[np.float32]) -> NDArray[np.generic]:
        spec_in, spec_out = model.inputs[0], model.outputs[0]
        tensor = np.ascontiguousarray(tensor)
        request_in = self._module.InferInput(spec_in.name, list(tensor.shape), spec_in.data_type)
        request_out = self._module.InferRequestedOutput(spec_out.name)
        out_dtype = _NUMPY_TYPES[spec_out.data_type]
        if self._shared_memory:
            channels = 1 if model.output_kind == "labels" else max(len(model.labels), 1)
            out_shape = (tensor.shape[0], channels, *tensor.shape[2:])
            out_bytes = int(np.prod(out_shape)) * np.dtype(out_dtype).itemsize
            in_name, in_handle = self._region("in", tensor.nbytes)
            out_name, out_handle = self._region("out", out_bytes)
            from tritonclient.utils import shared_memory as shm

            shm.set_shared_memory_region(in_handle, [tensor])
            request_in.set_shared_memory(in_name, tensor.nbytes)
            request_out.set_shared_memory(out_name, out_bytes)
        elif self._protocol == "http":
            request_in.set_data_from_numpy(tensor, binary_data=True)
            request_out = self._module.InferRequestedOutput(spec_out.name, binary_data=True)
        else:
            request_in.set_data_from_numpy(tensor)
        kwargs: dict[str, Any] = {}
        if self._protocol == "grpc":
            kwargs["client_timeout"] = self._timeout_s
        with metrics.TRITON_SECONDS.time():
            result = self._client.infer(model.name, [request_in], outputs=[request_out],
                                        model_version=str(model.triton_version), **kwargs)
        if self._shared_memory:
            from tritonclient.utils import shared_memory as shm

            output = result.get_output(spec_out.name)
            shape = output.shape if hasattr(output, "shape") else output["shape"]
            return np.array(shm.get_contents_as_numpy(out_handle, out_dtype, list(shape)))
        return np.array(result.as_numpy(spec_out.name))  # owned and writable

    # -- shared memory ---------------------------------------------------------------------
    def _region(self, role: str, size: int) -> tuple[str, Any]:
        """This thread's registered system shared-memory region of exactly ``size`` bytes for
        ``role``; only this thread ever uses it (reused while the size stays the same)."""
        from tritonclient.utils import shared_memory as shm

        connection = self._connection
        existing = connection.regions.get(role)
        if existing is not None:
            if existing[2] == size:
                return existing[0], existing[1]
            self._release(connection, role)
        name = (
            f"ainode_{os.getpid()}_{threading.get_ident()}_{next(_region_numbers)}_{role}"
        )
        handle = shm.create_shared_memory_region(name, "/" + name, size)
        try:
            connection.client.register_system_shared_memory(name, "/" + name, size)
        except BaseException:
            shm.destroy_shared_memory_region(handle)
            raise
        connection.regions[role] = (name, handle, size)
        return name, handle

    def _release(self, connection: _Connection, role: str) -> None:
        from tritonclient.utils import InferenceServerException
        from tritonclient.utils import shared_memory as shm

        name, handle, _size = connection.regions.pop(role)
        try:
            connection.client.unregister_system_shared_memory(name)
        except InferenceServerException as exc:
            log.warning("could not unregister shared memory %s: %s", name, exc)
        shm.destroy_shared_memory_region(handle)

    def close(self) -> None:
        """Release every thread's regions and clients (call when no job is running)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            for role in list(connection.regions):
                self._release(connection, role)
            connection.client.close()
        self._local = threading.local()
