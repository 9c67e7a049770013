"""What TensorRT 10.x's ONNX parser accepts, per operator: supported or not, the tensor types it
takes, and a short note on restrictions.

Derived (not copied) from onnx-tensorrt's operator support matrix for TensorRT 10.15, the newest
10.x version in the reference store (see ``SOURCE``). ``types`` are the element types of the
operator's data tensors, in onnx-tensorrt's spelling (``FP32``, ``FP16``, ``BF16``, ``INT32``,
``INT64``, ``BOOL``, ``INT8``, ``FP8``, ``FP4``, ``INT4``, ``UINT8``); INT8, INT4, FP8 and FP4 are
"quantized types" that TensorRT only reaches through Q/DQ from a wider float.
Plain data, no imports: ``import exporter.trtcheck`` stays instant.
"""

from __future__ import annotations

from typing import NamedTuple

TRT_VERSION = "10.15"
SOURCE = {
    "repo": "onnx/onnx-tensorrt",
    "path": "docs/operators.md",
    "commit": "fa5aa9f61e7781d2ca8f5351d42c1f19525a6124",
    "header": "TensorRT 10.15 supports operators in the inclusive range of opset 9 to opset 24.",
}
OPSET_RANGE = (9, 24)  # default-domain opsets the parser reads, both ends included
# ONNX TensorProto element types (by number) in onnx-tensorrt's spelling
TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
              9: "BOOL", 10: "FP16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128",
              16: "BF16", 17: "FP8", 18: "FP8E4M3FNUZ", 19: "FP8E5M2", 20: "FP8E5M2FNUZ", 21: "UINT4", 22: "INT4",
              23: "FP4", 24: "FP8E8M0"}
# inputs whose element type is checked against the table: the data tensors of the ops transformer
# encoders are made of (indices, shapes and conditions have fixed types of their own)
TYPED_INPUTS = {"MatMul": (0, 1), "Gemm": (0, 1), "Gather": (0,), "Reshape": (0,), "Slice": (0,),
                "Unsqueeze": (0,), "Squeeze": (0,), "LayerNormalization": (0,), "Softmax": (0,), "Erf": (0,),
                "Where": (1, 2), "Expand": (0,), "Add": (0, 1), "Mul": (0, 1), "Sub": (0, 1), "Div": (0, 1),
                "Sqrt": (0,), "Pow": (0,), "Tanh": (0,), "Transpose": (0,), "Concat": (0,), "Gelu": (0,)}
# element types the parser reads at all; DOUBLE only by casting down to FP32 (clamped to +-FLT_MAX),
# UINT8 only as a network input or output
DATA_TYPES = ("DOUBLE", "FP32", "FP16", "BF16", "FP8", "FP4", "INT32", "INT64", "INT8", "INT4", "UINT8", "BOOL")


class OpSupport(NamedTuple):
    supported: bool
    types: tuple[str, ...]
    restriction: str = ""


_F2 = ("FP32", "FP16")
_F3 = ("FP32", "FP16", "BF16")
_FI = _F3 + ("INT32", "INT64")
_FIB = _FI + ("BOOL",)
_CAST = _FI + ("UINT8", "BOOL")
_CONST = _F3 + ("FP8", "FP4", "INT4", "INT32", "INT64", "BOOL")

# operators the parser refuses (no TensorRT layer and no built-in plugin)
_UNSUPPORTED = (
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
    "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "ImageDecoder",
    "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss",
    "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch",
    "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
    "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer",
    "StringSplit", "TfIdfVectorizer", "Unique",
)

# supported operators without a documented restriction, grouped by the types they take
_PLAIN = {
    ("BOOL",): ("And", "Not", "Or", "Xor"),
    _F2: ("BlackmanWindow", "HammingWindow", "HannWindow", "Mish", "NonMaxSuppression", "NonZero", "RoiAlign"),
    _F3: ("Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BatchNormalization", "Ceil", "Celu", "Clip", "Conv",
          "ConvTranspose", "Cos", "Cosh", "Einsum", "Elu", "Erf", "Exp", "Floor", "Gemm", "GlobalAveragePool",
          "GlobalLpPool", "GlobalMaxPool", "GroupNormalization", "HardSigmoid", "HardSwish", "ImageScaler",
          "InstanceNormalization", "IsInf", "LeakyRelu", "Log", "LogSoftmax", "LRN", "LpNormalization", "MatMul",
          "MeanVarianceNormalization", "ParametricSoftplus", "PRelu", "Reciprocal", "RMSNormalization", "Round",
          "ScaledTanh", "Scan", "Selu", "Sigmoid", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Tan",
          "Tanh", "ThresholdedRelu", "Upsample"),
    _FI: ("Abs", "Add", "ArgMax", "ArgMin", "DepthToSpace", "Div", "Equal", "Greater", "GreaterOrEqual", "IsNaN",
          "Less", "LessOrEqual", "Max", "Min", "Mod", "Mul", "Neg", "Pad", "Pow", "Range", "Relu", "Scatter",
          "ScatterElements", "Shrink", "Sign", "SpaceToDepth", "Sub", "Sum"),
    _FIB: ("Concat", "Expand", "Flatten", "Gather", "GatherElements", "GatherND", "Identity", "Reshape",
           "ReverseSequence", "Shape", "Size", "Slice", "Split", "Tile", "Transpose", "Trilu", "Where"),
    _CAST: ("Cast", "CastLike"),
    _CONST: ("ConstantOfShape",),
    _F3 + ("INT8", "INT32", "INT64"): ("Gelu",),
    _F3 + ("FP8", "INT32", "INT64"): ("Mean",),
}

_AXES_CONST = "the axes input must be a constant initializer"
_BIDIR = "a bidirectional layer must use the same activations in both directions"
_SEEDLESS = "the seed is ignored"

# supported operators with a restriction worth knowing, in our words
_RESTRICTED = {
    "Attention": (_F3 + ("INT8", "FP8"), "Q, K, V and the mask must be 4-D; no KV-cache inputs or outputs "
                                         "(past_*, present_*, nonpad_kv_seqlen, qk_matmul_output); no softcap; "
                                         "head counts come from the Q/K/V shapes"),
    "AveragePool": (_F3, "2-D or 3-D pooling only; no dilations"),
    "Constant": (_CONST, "sparse and string values are not read"),
    "CumSum": (_F3, "the axis must be known at build time"),
    "DeformConv": (_F2, "1-D or 2-D spatial input; begin and end pads equal per axis"),
    "DequantizeLinear": (("INT8", "FP8", "FP4", "INT4"), "the zero point must be 0 (symmetric)"),
    "Dropout": (_F3, "is_training must be a constant False"),
    "EyeLike": (_FIB, "the input shape must be static"),
    "GRU": (_F3, _BIDIR),
    "GridSample": (_F2, "4-D input only"),
    "Hardmax": (_F3, "the size of the axis dimension must be known at build time"),
    "If": (_FIB, "both branches give outputs of the same rank under different names"),
    "LayerNormalization": (_F3, "only the first output (Y) may be used"),
    "Loop": (_FIB, "scan outputs need a fixed length; loop-carried shapes may not change between iterations"),
    "LSTM": (_F3, _BIDIR + "; input_forget and layout must be 0"),
    "LpPool": (_F3, "no dilations"),
    "MaxPool": (_F3, "2-D or 3-D pooling only; no Indices output; no dilations"),
    "OneHot": (_FIB, "depth must be known at build time"),
    "QuantizeLinear": (_F3, "the zero point must be 0 (symmetric)"),
    "RandomNormal": (_F3, _SEEDLESS),
    "RandomNormalLike": (_F3, _SEEDLESS),
    "RandomUniform": (_F3, _SEEDLESS),
    "RandomUniformLike": (_F3, _SEEDLESS),
    "Resize": (_F3, "nearest or linear modes with the common coordinate transforms; stretch aspect policy; "
                    "no antialiasing; tensor scales need axes covering every dimension in order"),
    "RNN": (_F3, _BIDIR),
    "RotaryEmbedding": (_F3, "position_ids must be INT64"),
    "STFT": (("FP32",), "real input; frame_step and window must be initializers"),
    "ScatterND": (_FI, "only reduction='none'"),
    "Squeeze": (_FIB, "the axes must fold to a constant at build time"),
    "TensorScatter": (_F3 + ("INT32",), "past_cache and update must be 4-D, with axis -2"),
    "TopK": (_FI, "sorted must be 1 and K below 3840"),
    "Unsqueeze": (_FIB, "the axes must fold to a constant at build time"),
}
_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare")


def _build() -> dict[str, OpSupport]:
    table = {op: OpSupport(False, ()) for op in _UNSUPPORTED}
    table["DynamicQuantizeLinear"] = OpSupport(False, (), "not supported; compose it as a model-local function")
    for types, ops in _PLAIN.items():
        table.update((op, OpSupport(True, types)) for op in ops)
    table.update((op, OpSupport(True, types, note)) for op, (types, note) in _RESTRICTED.items())
    table.update((op, OpSupport(True, _FI, _AXES_CONST)) for op in _REDUCE)
    return dict(sorted(table.items()))


OPERATORS: dict[str, OpSupport] = _build()
