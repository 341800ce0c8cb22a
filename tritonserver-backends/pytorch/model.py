"""A Python stand-in for Triton's PyTorch (libtorch) backend, for CPU-only test machines.

Triton 2.51 loads ``<backend-dir>/pytorch/model.py`` as a Python-based backend when the C++
library is absent, so standard ``platform: "pytorch_libtorch"`` models (TorchScript,
``<version>/model.pt``) in model_repository/ load here unchanged; in the NGC container the real
libtorch backend serves the same files. Inputs are passed to the module in config.pbtxt's order,
its outputs (a tensor or a tuple) named in that order, as the libtorch backend does.
"""

import json
import os
import warnings

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        filename = config.get("default_model_filename") or "model.pt"
        torch.set_num_threads(int(os.environ.get("TORCH_INTRA_OP_THREADS", "2")))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(os.path.join(version_dir, filename),
                                         map_location="cpu").eval()
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            tensors = [torch.from_numpy(np.array(
                pb_utils.get_input_tensor_by_name(request, name).as_numpy()))
                for name in self.inputs]
            try:
                with torch.inference_mode():
                    results = self.module(*tensors)
            except RuntimeError as exc:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(exc)[:300])))
                continue
            if isinstance(results, torch.Tensor):
                results = (results,)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(value.numpy()))
                for name, value in zip(self.outputs, results)]))
        return responses

    def finalize(self):
        self.module = None
