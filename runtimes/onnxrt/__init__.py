"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers."""
