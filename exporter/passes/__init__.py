"""ONNX graph passes: each a function ``model -> PassResult``, sharing one ``GraphIndex``.

A pass rewrites the ``onnx.ModelProto`` it is given in place and returns it in a ``PassResult``
that says whether anything changed. Pipelines are plain tuples of passes run by ``run_passes``.
"""

from exporter.passes.core import GraphIndex, PassResult, attr, run_passes
from exporter.passes.naming import name_unnamed_nodes
from exporter.passes.nibbles import split_8bit_matmulnbits
from exporter.passes.qdq import fold_transposed_weight_qdq
from exporter.passes.skip_layer_norm import unfuse_skip_layer_norm

# after ONNX Runtime's transformer fusion for the CPU (see exporter/optimize.py for why)
CPU_FUSION_CLEANUP = (unfuse_skip_layer_norm,)
# after the TorchScript export of a QAT model, for TensorRT's explicit quantization
QAT_EXPORT = (fold_transposed_weight_qdq,)
# before ONNX Runtime's quantizer: exclusion works by node name
BEFORE_QUANTIZE = (name_unnamed_nodes,)
# after weight-only quantization for the CPU: 8-bit MatMulNBits at float activations as two 4-bit ones
AFTER_WEIGHT_ONLY = (split_8bit_matmulnbits,)

__all__ = ["AFTER_WEIGHT_ONLY", "BEFORE_QUANTIZE", "CPU_FUSION_CLEANUP", "GraphIndex", "PassResult", "QAT_EXPORT", "attr",
           "fold_transposed_weight_qdq", "name_unnamed_nodes", "run_passes", "split_8bit_matmulnbits",
           "unfuse_skip_layer_norm"]
