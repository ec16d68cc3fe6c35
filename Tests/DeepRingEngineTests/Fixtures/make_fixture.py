"""Writes python_mlp.safetensors with the Python safetensors library (run once; the output is committed)."""
import json, numpy as np
from safetensors.numpy import save_file
arch = {"name": "mlp", "inputShape": [4], "classes": 2,
        "layers": [{"type": "dense", "units": 3}, {"type": "relu"}, {"type": "dense", "units": 2}]}
t = {"layers.0.weight": (np.arange(12, dtype=np.float32) * 0.25 - 1).reshape(4, 3),
     "layers.0.bias": np.zeros(3, np.float32),
     "layers.2.weight": np.ones((3, 2), np.float32),
     "layers.2.bias": np.array([0.5, -0.5], np.float32)}
save_file(t, "python_mlp.safetensors", metadata={"deepring.architecture": json.dumps(arch), "written_by": "python safetensors"})
