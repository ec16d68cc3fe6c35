"""Loads a DeepRing model file with the Python safetensors library and prints the sum of all values."""
import sys
from safetensors.numpy import load_file
from safetensors import safe_open
tensors = load_file(sys.argv[1])
with safe_open(sys.argv[1], "np") as f:
    assert "deepring.architecture" in f.metadata()
print("sum", sum(float(v.astype("float64").sum()) for v in tensors.values()))
