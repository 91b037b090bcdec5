"""Loads a model exported by `cohort-coordinator model export` with Python's safetensors and
NumPy, rebuilds the network from the spec in the file's metadata (linear, relu, flatten and
dropout layers: what the digits MLP uses), runs it on a test set and prints its accuracy as
JSON. Used by coordinator/tests/model_export.rs.

Usage: python3 export_forward.py MODEL.safetensors TESTSET.safetensors
(the test set file holds `x`, float32 [n, features], and `y`, int64 [n]).
"""

import json
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def main(model_path, test_path):
    with safe_open(model_path, framework="np") as f:
        meta = f.metadata()
    tensors = load_file(model_path)
    spec = json.loads(meta["cohort.model_spec"])
    test = load_file(test_path)
    x = test["x"].astype(np.float32)
    y = test["y"]
    for i, layer in enumerate(spec["layers"]):
        kind = layer["type"]
        if kind == "linear":
            w = tensors[f"layers.{i}.weight"]
            b = tensors[f"layers.{i}.bias"]
            assert w.shape == (x.shape[1], layer["out"]), (w.shape, x.shape)
            x = x @ w + b
        elif kind == "relu":
            x = np.maximum(x, 0.0)
        elif kind == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif kind == "dropout":
            pass
        else:
            raise SystemExit(f"layer type {kind} is not implemented in this reader")
    accuracy = float((x.argmax(axis=1) == y).mean())
    print(json.dumps({
        "accuracy": accuracy,
        "examples": int(len(y)),
        "task": meta["cohort.task"],
        "round": int(meta["cohort.round"]),
        "model_hash": meta["cohort.model_hash"],
        "tensors": sorted(tensors),
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
