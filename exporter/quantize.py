"""``quantize``: INT8 post-training quantization of an ONNX artifact with ONNX Runtime's tools,
plus an accuracy-driven search that keeps the most damaging nodes in float.

Recipes:
- ``--target tensorrt``: static QDQ in the placement TensorRT's explicit quantization expects:
  symmetric INT8 activations and weights (zero point 0), per-channel weights, Q/DQ on the inputs of
  MatMul/Gemm, standard operators only. The same file runs on ONNX Runtime CPU.
- ``--target cpu``: the fast form for ONNX Runtime on CPUs. Static QDQ (U8 activations, S8
  weights) or dynamic (weights quantized offline, activations at run time); weight-only MatMuls
  by default for dynamic. ``reduce_range`` (7-bit weights) is turned on where the CPU lacks VNNI,
  where U8S8 products can saturate.

Accuracy-driven exclusion: the cost of each quantized node is the output cosine loss when only
that node is quantized, measured on the calibration data; the costliest nodes are kept in float
until ``max_cosine_loss`` is met, within ``max_float_nodes``. Calibration ranges are computed once
and cached, so the search re-quantizes without re-calibrating.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from evaluation.data import TextDataset, data_for_task
from evaluation.machine import describe_machine
from evaluation.parity import masked_mean_pool, mean_row_cosine
from exporter.manifest import onnx_manifest
from exporter.optimize import contrib_ops, op_counts
from exporter.passes import BEFORE_QUANTIZE, GraphIndex, run_passes
from exporter.writer import ArtifactWriter, open_input
from runtimes import open_runner
from runtimes.artifact import Artifact
from runtimes.errors import CheckFailed, UsageError
from runtimes.tasks import Task, get_task

MODES = ("static", "dynamic")
TARGETS = ("cpu", "tensorrt")
METHODS = ("minmax", "entropy", "percentile")
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul",
                 "QLinearConv", "ConvInteger", "DynamicQuantizeMatMul", "QAttention", "QGemm", "MatMulNBits",
                 "MatMulIntegerToFloat", "QOrderedMatMul"}


@dataclass(frozen=True)
class QuantizeConfig:
    mode: str = "static"
    target: str = "cpu"
    method: str = "minmax"
    per_channel: bool = False
    reduce_range: bool | None = None  # None: on where the CPU has no VNNI (cpu target only)
    weight_only: bool = True  # dynamic: quantize only MatMuls whose second input is a weight
    exclude: tuple[str, ...] = ()
    max_cosine_loss: float | None = None
    max_float_nodes: int | None = None
    calib_rows: int = 128
    eval_rows: int = 64
    batch_size: int = 8
    max_length: int = 128

    def __post_init__(self):
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.target == "tensorrt" and self.mode != "static":
            raise UsageError("--target tensorrt takes --mode static: TensorRT runs explicit (QDQ) quantization only")
        if self.max_cosine_loss is not None and not 0 <= self.max_cosine_loss < 1:
            raise UsageError(f"--max-cosine-loss must be within [0, 1), got {self.max_cosine_loss}")
        if self.max_float_nodes is not None and self.max_float_nodes < 0:
            raise UsageError(f"--max-float-nodes must be >= 0, got {self.max_float_nodes}")
        if self.calib_rows < 1 or self.eval_rows < 1 or self.batch_size < 1:
            raise UsageError("calibration rows, eval rows and batch size must be >= 1")
        if self.max_length < 2:
            raise UsageError(f"--max-length must be at least 2, got {self.max_length}")


def _cpu_has_vnni() -> bool:
    feats = describe_machine()["cpu_features"]
    return any(f in feats for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


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
class _Graph:
    path: Path
    candidates: list[str]  # nodes the recipe quantizes, in graph order
    weight_matmuls: list[str]
    op_of: dict[str, str] = field(default_factory=dict)


def _inspect(path: Path, op_types: Sequence[str]) -> _Graph:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = GraphIndex(model.graph).initializers
    present = {n.op_type for n in model.graph.node}
    if present & QUANTIZED_OPS:
        raise UsageError(f"{path}: the model is already quantized ({sorted(present & QUANTIZED_OPS)}); quantize the float artifact")
    cands = [n.name for n in model.graph.node if n.op_type in op_types]
    weights = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits]
    return _Graph(path, cands, weights, {n.name: n.op_type for n in model.graph.node})


class _Quantizer:
    """Quantizes one prepared float graph with fixed settings and cached calibration ranges."""

    def __init__(self, float_path: Path, work: Path, cfg: QuantizeConfig, calib: list[dict], reduce_range: bool):
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

        self.float_path, self.work, self.cfg, self.calib = float_path, work, cfg, calib
        self.reduce_range = reduce_range
        self.cache = work / "calibration_ranges.json"
        self.method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}[cfg.method]
        self.QuantFormat, self.QuantType = QuantFormat, QuantType
        has_attention = "com.microsoft::Attention" in op_counts(float_path)
        if cfg.mode == "dynamic":
            self.op_types = ["MatMul", "Gemm"] + (["Attention"] if has_attention else [])
        else:
            self.op_types = ["MatMul", "Gemm"]
        self.graph = _inspect(float_path, self.op_types)
        self.n = 0

    def nodes(self) -> list[str]:
        if self.cfg.mode == "dynamic" and self.cfg.weight_only:
            return [n for n in self.graph.candidates if n in self.graph.weight_matmuls or self.graph.op_of[n] == "Attention"]
        return list(self.graph.candidates)

    def run(self, quantize_nodes: Sequence[str], out: Path | None = None) -> Path:
        """Quantize exactly ``quantize_nodes``; returns the written model path."""
        from onnxruntime.quantization import quantize_dynamic, quantize_static

        self.n += 1
        out = out or self.work / f"q{self.n}.onnx"
        if not quantize_nodes:  # onnxruntime reads an empty node list as "quantize everything"
            shutil.copy2(self.float_path, out)
            return out
        common = dict(nodes_to_quantize=list(quantize_nodes), op_types_to_quantize=self.op_types,
                      per_channel=self.cfg.per_channel or self.cfg.target == "tensorrt")
        if self.cfg.mode == "dynamic":
            # MatMulConstBOnly: onnxruntime's dynamic default skips activation x activation MatMuls
            quantize_dynamic(str(self.float_path), str(out), weight_type=self.QuantType.QInt8,
                             reduce_range=self.reduce_range, extra_options={"MatMulConstBOnly": self.cfg.weight_only},
                             **common)
        elif self.cfg.target == "tensorrt":
            quantize_static(str(self.float_path), str(out), _Reader(self.calib), quant_format=self.QuantFormat.QDQ,
                            activation_type=self.QuantType.QInt8, weight_type=self.QuantType.QInt8,
                            calibrate_method=self.method, calibration_cache_path=self.cache, reduce_range=False,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
                            **common)
        else:
            quantize_static(str(self.float_path), str(out), _Reader(self.calib), quant_format=self.QuantFormat.QDQ,
                            activation_type=self.QuantType.QUInt8, weight_type=self.QuantType.QInt8,
                            calibrate_method=self.method, calibration_cache_path=self.cache,
                            reduce_range=self.reduce_range, **common)
        return out


class _Scorer:
    """Cosine loss of a candidate graph against the float graph's outputs on fixed feeds: the first
    output, reduced to one row per sample (mean over real tokens where the task has a padding mask)."""

    def __init__(self, art: Artifact, feeds: list[dict], task: Task | None = None):
        self.feeds, self.task = feeds, get_task(task)
        self.ref = self._outputs(art.model_file)

    def _outputs(self, path: Path) -> list[np.ndarray]:
        art = Artifact(path.parent, "onnx", None, {"model_file": path.name})
        with open_runner(art, "onnxruntime:cpu") as r:
            first = r.output_specs()[0].name
            return [masked_mean_pool(r.infer(f)[first], self.task.mask(f)) for f in self.feeds]

    def loss(self, path: Path) -> float:
        return 1.0 - mean_row_cosine(np.concatenate(self.ref), np.concatenate(self._outputs(path)))


def quantize(
    artifact: str | os.PathLike | Artifact,
    out: str | os.PathLike,
    *,
    config: QuantizeConfig = QuantizeConfig(),
    calib: TextDataset | None = None,
    force: bool = False,
    command: str | None = None,
    progress: bool = True,
) -> Artifact:
    """Quantize an ONNX artifact to INT8; with ``max_cosine_loss``, search for the float nodes.

    Raises:
        UsageError: static without calibration data, a quantized or non-ONNX input, contrib ops
            for ``--target tensorrt``, excluded nodes that do not exist, output exists.
        CheckFailed: the cosine target cannot be met within ``max_float_nodes`` (exit 1).
    """
    src = open_input(artifact, "onnx", "quantize")
    if config.mode == "static" and calib is None:
        raise UsageError("static quantization (the default, and the only mode of --target tensorrt) needs calibration "
                         "data: pass --calib FILE (real texts, a few hundred rows), or --mode dynamic for --target cpu")
    writer = ArtifactWriter(out, force=force, inputs=[src.path])
    ops = op_counts(src.model_file)
    if config.target == "tensorrt" and contrib_ops(ops):
        raise UsageError(f"{src.path}: has ONNX Runtime contrib operators {contrib_ops(ops)} that TensorRT cannot parse; "
                         "quantize an artifact made by export or by optimize --target tensorrt")
    reduce_range = config.reduce_range if config.reduce_range is not None else (config.target == "cpu" and not _cpu_has_vnni())
    texts = calib if calib is not None else None
    with writer.scratch() as work:  # beside the output: same filesystem, swept by the next run if killed
        prepared = work / "float.onnx"
        _preprocess(src.model_file, prepared, has_contrib=bool(contrib_ops(ops)))
        calib_feeds, eval_feeds = _feeds(src, texts, config)
        q = _Quantizer(prepared, work, config, calib_feeds, reduce_range)
        nodes = q.nodes()
        unknown = sorted(set(config.exclude) - set(q.graph.op_of))
        if unknown:
            raise UsageError(f"--exclude names nodes that are not in {src.model_file}: {unknown[:5]}; "
                             f"see the node names with onnx or in a previous manifest's 'quantization.node_costs'")
        base = [n for n in nodes if n not in set(config.exclude)]
        scorer = _Scorer(Artifact(prepared.parent, "onnx", None, {"model_file": prepared.name}), eval_feeds, src.task)
        search = _search(q, scorer, base, config, progress)

        def fill(tmp):
            q.run(search["quantized_nodes"], tmp / "model.onnx")
            parity = _parity(src, Artifact(tmp, "onnx", src.task, {}, alias=writer.out.name), eval_feeds, scorer)
            return onnx_manifest(
                tmp, task=src.task, source=src, command=command, checks={"onnx_checker": "skipped: quantized graph"},
                options={**asdict(config), "reduce_range": reduce_range}, parity=parity, quantization={
                    "mode": config.mode, "target": config.target,
                    "method": config.method if config.mode == "static" else None,
                    "per_channel": config.per_channel or config.target == "tensorrt", "reduce_range": reduce_range,
                    "format": "QDQ" if config.mode == "static" else "dynamic (MatMulInteger)",
                    "calibration": {"source": texts.source, "rows": min(len(texts), config.calib_rows),
                                    "hash": texts.fingerprint()} if texts is not None else None,
                    "ops_after": op_counts(tmp / "model.onnx"), **search,
                },
            )

        return writer.write(fill, companions_from=src.path)


def _preprocess(src: Path, dst: Path, has_contrib: bool) -> None:
    """ONNX Runtime's quantization pre-processing: symbolic shape inference (which knows contrib
    ops, where plain ONNX shape inference fails on a fused graph); no extra optimization."""
    import contextlib

    from onnxruntime.quantization.shape_inference import quant_pre_process

    # symbolic shape inference saves a debug copy (with a uuid-named external data file) into the
    # current directory when it fails: keep that out of the user's working directory
    src, dst = Path(src).resolve(), Path(dst).resolve()
    with contextlib.chdir(dst.parent):
        if has_contrib:
            quant_pre_process(str(src), str(dst), skip_optimization=True, skip_onnx_shape=True, skip_symbolic_shape=False,
                              auto_merge=True, guess_output_rank=True)
        else:
            quant_pre_process(str(src), str(dst), skip_optimization=True, skip_onnx_shape=False, skip_symbolic_shape=True)
    _name_nodes(dst)


def _name_nodes(path: Path) -> None:
    """Give unnamed nodes stable names (``BEFORE_QUANTIZE``): exclusion works by name."""
    import onnx

    model = onnx.load(str(path))
    if run_passes(BEFORE_QUANTIZE, model).modified:
        onnx.save_model(model, str(path))


def _feeds(src: Artifact, texts: TextDataset | None, cfg: QuantizeConfig) -> tuple[list[dict], list[dict]]:
    task = get_task(src.task)
    processor = task.load_processor(src.path)
    with open_runner(src, "onnxruntime:cpu") as r:
        specs = r.input_specs()

    def encode(ds, fixed: bool) -> list[dict]:
        return [task.feeds_for(e, specs, src.name) for e in task.encode_batches(
            processor, ds, cfg.batch_size, max_length=cfg.max_length, same_shape=fixed)]

    data = data_for_task(texts, task)
    # onnxruntime's histogram calibrators (entropy, percentile) need equal shapes across batches:
    # one padded length, and full batches (the last one is filled by cycling through the data)
    fixed = cfg.mode == "static" and cfg.method != "minmax"
    n = min(len(data), cfg.calib_rows)
    calib = encode(data.take(-(-n // cfg.batch_size) * cfg.batch_size if fixed else n), fixed=fixed)
    evald = encode(data.take(min(len(data), cfg.eval_rows)), fixed=False)
    return calib, evald


def _search(q: _Quantizer, scorer: _Scorer, base: list[str], cfg: QuantizeConfig, progress: bool) -> dict:
    full_loss = scorer.loss(q.run(base))
    result = {"candidates": len(base), "user_excluded": list(cfg.exclude), "loss_all_quantized": full_loss,
              "cosine_loss": full_loss, "float_nodes": [], "node_costs": None, "quantized_nodes": base}
    if cfg.max_cosine_loss is None or full_loss <= cfg.max_cosine_loss:
        return result
    costs = {}
    for node in tqdm(base, desc="node sensitivity", unit="node", disable=not progress):
        costs[node] = scorer.loss(q.run([node]))
    ranked = sorted(base, key=lambda n: -costs[n])
    cap = len(base) if cfg.max_float_nodes is None else min(cfg.max_float_nodes, len(base))
    losses = {0: full_loss}

    def loss_with(k: int) -> float:
        if k not in losses:
            keep = set(ranked[:k])
            losses[k] = scorer.loss(q.run([n for n in base if n not in keep]))
        return losses[k]

    if loss_with(cap) > cfg.max_cosine_loss:
        raise CheckFailed(f"cosine loss {loss_with(cap):.5f} with the {cap} costliest nodes in float still misses "
                          f"--max-cosine-loss {cfg.max_cosine_loss} by {loss_with(cap) - cfg.max_cosine_loss:.5f}; "
                          "raise --max-float-nodes or the target")
    lo, hi = 0, cap  # loss(lo) > target >= loss(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if loss_with(mid) <= cfg.max_cosine_loss:
            hi = mid
        else:
            lo = mid
    keep = set(ranked[:hi])
    result.update(cosine_loss=loss_with(hi), float_nodes=ranked[:hi],
                  node_costs={n: costs[n] for n in ranked}, quantized_nodes=[n for n in base if n not in keep],
                  search_evaluations={str(k): v for k, v in sorted(losses.items())})
    return result


def _parity(src: Artifact, art: Artifact, feeds: list[dict], scorer: _Scorer) -> dict:
    loss = scorer.loss(art.model_file)
    return {"reference": f"{src.name} @ onnxruntime:cpu", "metric": "mean cosine of masked-mean-pooled outputs",
            "mean_cosine": 1.0 - loss, "rows": int(sum(next(iter(f.values())).shape[0] for f in feeds))}
