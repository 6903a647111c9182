"""The `example.py` every ONNX Runtime artifact carries: how a service loads and runs it, onnxruntime alone."""

EXAMPLE_SCRIPT = '''"""Run this artifact with onnxruntime alone: pip install onnxruntime numpy; python example.py [images.npy]

Written by hadmc-deploy. A service does the same: build the session once with the
recorded options, preprocess like training did, call run() per request.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
META = json.loads((HERE / "metadata.json").read_text())


def load_session():
    recorded = META["session_options"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = recorded["intra_op_num_threads"]
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, recorded["graph_optimization_level"])
    # graph transformers this model was measured to run faster without (hadmc-deploy timed both)
    disabled = set(recorded.get("disabled_optimizers") or [])
    extra = {"disabled_optimizers": disabled} if disabled else {}
    return ort.InferenceSession(str(HERE / META["model_file"]), options, providers=["CPUExecutionProvider"], **extra)


def preprocess(images):
    """uint8 images (N, C, H, W) -> the float32 input the model was trained on: x / 255, then (x - mean) / std."""
    x = np.asarray(images, dtype=np.float32)
    if images.dtype == np.uint8:
        x = x / 255.0
    pre = META.get("preprocess") or {}
    if pre.get("mean") is not None and pre.get("std") is not None:
        mean = np.asarray(pre["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(pre["std"], np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    return x


def main():
    session = load_session()
    spec = META["inputs"][0]
    if len(sys.argv) > 1:
        batch = preprocess(np.load(sys.argv[1]))
    else:  # no images given: one random input of the recorded shape
        shape = [d if isinstance(d, int) else 1 for d in spec["shape"]]
        batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outputs = session.run(None, {spec["name"]: batch})
    logits = outputs[0]
    print(json.dumps({"output_shape": list(logits.shape), "top1": logits.reshape(len(logits), -1).argmax(1).tolist()}))


if __name__ == "__main__":
    main()
'''
