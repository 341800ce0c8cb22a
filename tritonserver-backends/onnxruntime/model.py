"""A Python stand-in for Triton's ``onnxruntime`` backend, for CPU-only test machines.

Triton 2.51 loads ``<backend-dir>/onnxruntime/model.py`` as a Python-based backend when the C++
library is absent, so standard ``platform: "onnxruntime_onnx"`` models in model_repository/ load
here unchanged; in the NGC container the real C++ onnxruntime backend serves the same files.
Tensor names, types and the model file come from the model's own config.pbtxt.
"""

import json
import os

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        filename = config.get("default_model_filename") or "model.onnx"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("ORT_INTRA_OP_THREADS", "2"))
        self.session = onnxruntime.InferenceSession(
            os.path.join(version_dir, filename), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    for name in self.inputs}
            results = self.session.run(self.outputs, feed)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value))
                       for name, value in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def finalize(self):
        self.session = None
