"""TensorRT readiness without a GPU: ``check_tensorrt(artifact)`` lists what would stop TensorRT
10.x (and 11, where it differs) from building an ONNX artifact.

Importing this package imports neither onnx nor torch nor tensorrt; ``check_tensorrt`` loads onnx
when it runs.
"""

from exporter.trtcheck.check import Finding, ReadinessReport, check_tensorrt
from exporter.trtcheck.operators import OPERATORS, OPSET_RANGE, SOURCE, TRT_VERSION, OpSupport

__all__ = ["Finding", "OPERATORS", "OPSET_RANGE", "OpSupport", "ReadinessReport", "SOURCE", "TRT_VERSION",
           "check_tensorrt"]
