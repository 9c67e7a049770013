"""The machinery under ``quantize``: one float graph quantized with fixed settings (ONNX Runtime's
``quantize_dynamic`` / ``quantize_static``, calibration ranges cached), and the scorer that judges a
quantized graph against the float one on fixed feeds."""

from __future__ import annotations

import copy
import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from evaluation.parity import masked_mean_pool, mean_row_cosine
from exporter.passes import GraphIndex
from runtimes import open_runner
from runtimes.artifact import Artifact
from runtimes.errors import UsageError
from runtimes.tasks import Task, get_task

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul",
                 "QLinearConv", "ConvInteger", "DynamicQuantizeMatMul", "QAttention", "QGemm", "MatMulNBits",
                 "MatMulIntegerToFloat", "QOrderedMatMul"}
QUANTIZABLE_OPS = ("MatMul", "Gemm", "Attention")  # the nodes whose choice the manifest records


def file_artifact(path: Path, task: str | None = None) -> Artifact:
    """An ONNX file in a scratch directory as an artifact (no manifest), to run it."""
    return Artifact(path.parent, "onnx", task, {"model_file": path.name})


class _Reader:
    """An onnxruntime CalibrationDataReader over pre-tokenized feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self.feeds = feeds
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)

    def rewind(self):
        self.it = iter(self.feeds)


@dataclass
class Graph:
    """What the recipe sees of a float graph: its candidate nodes and which MatMuls have a constant weight."""

    path: Path
    candidates: list[str]  # nodes the recipe's op types cover, in graph order
    weight_matmuls: list[str]
    op_of: dict[str, str] = field(default_factory=dict)


def refuse_quantized(ops, shown) -> None:
    """Raises UsageError naming ``shown`` when the op types ``ops`` (``domain::op`` taken as ``op``)
    include quantized ones."""
    if found := sorted({op.rsplit("::", 1)[-1] for op in ops} & QUANTIZED_OPS):
        raise UsageError(f"{shown}: the model is already quantized ({found}); quantize the float artifact")


def inspect_graph(path: Path, op_types: Sequence[str]) -> Graph:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = GraphIndex(model.graph).initializers
    refuse_quantized({n.op_type for n in model.graph.node}, path)
    cands = [n.name for n in model.graph.node if n.op_type in op_types]
    weights = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits]
    return Graph(path, cands, weights, {n.name: n.op_type for n in model.graph.node})


class Quantizer:
    """Quantizes one prepared float graph with fixed settings and cached calibration ranges.

    ``cfg`` is a resolved ``QuantizeConfig`` (mode, per_channel and reduce_range set)."""

    def __init__(self, float_path: Path, work: Path, cfg, calib: list[dict]):
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

        self.float_path, self.work, self.cfg, self.calib = float_path, work, cfg, calib
        work.mkdir(parents=True, exist_ok=True)
        self.cache = work / "calibration_ranges.json"
        self.method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}[cfg.method]
        self.QuantFormat, self.QuantType = QuantFormat, QuantType
        self.graph = inspect_graph(float_path, QUANTIZABLE_OPS)
        self.op_types = self._op_types()
        self._numbers = itertools.count(1)  # shared by with_config's copies: each file written once

    def _op_types(self) -> list[str]:
        fused_attention = self.cfg.mode == "dynamic" and self.cfg.attention and "Attention" in self.graph.op_of.values()
        return ["MatMul", "Gemm"] + (["Attention"] if fused_attention else [])

    def with_config(self, cfg) -> "Quantizer":
        """The same graph, work directory and calibration cache under other settings."""
        q = copy.copy(self)
        q.cfg = cfg
        q.op_types = q._op_types()
        return q

    def nodes(self) -> list[str]:
        """The nodes the recipe quantizes before any exclusion, in graph order."""
        g = self.graph
        return [n for n in g.candidates if g.op_of[n] in self.op_types
                and (g.op_of[n] == "Attention" or not (self.cfg.mode == "dynamic" and self.cfg.weight_only)
                     or n in g.weight_matmuls)]

    def run(self, quantize_nodes: Sequence[str], out: Path | None = None) -> Path:
        """Quantize exactly ``quantize_nodes``; returns the written model path."""
        from onnxruntime.quantization import quantize_dynamic, quantize_static

        out = out or self.work / f"q{next(self._numbers)}.onnx"
        if not quantize_nodes:  # onnxruntime reads an empty node list as "quantize everything"
            shutil.copy2(self.float_path, out)
            return out
        cfg, QT = self.cfg, self.QuantType
        common = dict(nodes_to_quantize=list(quantize_nodes), op_types_to_quantize=self.op_types,
                      per_channel=cfg.per_channel or cfg.target == "tensorrt")
        if cfg.mode == "dynamic":
            # MatMulConstBOnly: onnxruntime's dynamic default skips activation x activation MatMuls;
            # activations are always U8 here (DynamicQuantizeLinear has no S8 form)
            quantize_dynamic(str(self.float_path), str(out), weight_type=QT.QInt8, reduce_range=cfg.reduce_range,
                             extra_options={"MatMulConstBOnly": cfg.weight_only}, **common)
        elif cfg.target == "tensorrt":
            quantize_static(str(self.float_path), str(out), _Reader(self.calib), quant_format=self.QuantFormat.QDQ,
                            activation_type=QT.QInt8, weight_type=QT.QInt8,
                            calibrate_method=self.method, calibration_cache_path=self.cache, reduce_range=False,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
                            **common)
        else:
            quantize_static(str(self.float_path), str(out), _Reader(self.calib), quant_format=self.QuantFormat.QDQ,
                            activation_type=QT.QInt8 if cfg.activation == "s8" else QT.QUInt8, weight_type=QT.QInt8,
                            calibrate_method=self.method, calibration_cache_path=self.cache,
                            reduce_range=cfg.reduce_range, **common)
        return out


class Scorer:
    """A quantized graph against the float graph's outputs on fixed feeds: the mean cosine of the
    first output reduced to one row per sample (mean over real tokens where the task has a padding
    mask) and, for a task that scores labels, the top-1 agreement."""

    def __init__(self, float_path: Path, feeds: list[dict], task: Task | str | None = None):
        self.feeds, self.task = feeds, get_task(task)
        self.ref = np.concatenate(self._outputs(float_path))

    def _outputs(self, path: Path) -> list[np.ndarray]:
        with open_runner(file_artifact(path), "onnxruntime:cpu") as r:
            first = r.output_specs()[0].name
            return [masked_mean_pool(r.infer(f)[first], self.task.mask(f)) for f in self.feeds]

    def score(self, path: Path) -> dict:
        """``{"cosine": mean row cosine, "agreement": top-1 agreement or None}``."""
        out = np.concatenate(self._outputs(path))
        agree = float((out.argmax(-1) == self.ref.argmax(-1)).mean()) if self.task.scores_labels else None
        return {"cosine": mean_row_cosine(self.ref, out), "agreement": agree}

    def loss(self, path: Path) -> float:
        return 1.0 - self.score(path)["cosine"]

    @property
    def rows(self) -> int:
        return int(sum(next(iter(f.values())).shape[0] for f in self.feeds))
