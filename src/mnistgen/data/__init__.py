"""Data: the canonical MNIST / Fashion-MNIST IDX files as in-memory tensors."""

from mnistgen.data.mnist import Split, TensorData, load, load_split, resolve_data_dir, to_tensor_data

__all__ = ["Split", "TensorData", "load", "load_split", "resolve_data_dir", "to_tensor_data"]
