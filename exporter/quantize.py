"""``quantize``: INT8 post-training quantization of an ONNX artifact with ONNX Runtime's tools,
plus an accuracy-driven search that keeps the most damaging nodes in float, and a measured choice
among recipes (``select``, in ``exporter.recipes``).

Recipes:
- the default (no ``mode``, ``--target cpu``): dynamic, QInt8 per-channel weights, MatMuls with a
  constant weight only, 8-bit weights (no ``reduce_range``), the normalized activations smoothed
  first (``exporter.smoothing``). It is held to an accuracy budget: below it, nothing is written
  and the error says what to try.
- ``--target tensorrt``: static QDQ in the placement TensorRT's explicit quantization expects:
  symmetric INT8 activations and weights (zero point 0), per-channel weights, Q/DQ on the inputs of
  MatMul/Gemm, standard operators only. The same file runs on ONNX Runtime CPU.
- ``--target cpu`` with a ``mode``: static QDQ (U8 or S8 activations, S8 weights) or dynamic
  (weights quantized offline, U8 activations at run time). ``reduce_range`` (7-bit weights, against
  U8S8 saturation on CPUs without VNNI) is off unless asked for or chosen by ``select``: whether it
  pays on a machine is measured, never assumed from the CPU flags.

Accuracy-driven exclusion: the cost of each quantized node is the output cosine loss when only
that node is quantized, measured on the calibration data; the costliest nodes are kept in float
until ``max_cosine_loss`` is met, within ``max_float_nodes``. Calibration ranges are computed once
and cached, so the search re-quantizes without re-calibrating.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from evaluation.data import TextDataset, data_for_task
from exporter.manifest import onnx_manifest
from exporter.optimize import contrib_ops, op_counts
from exporter.passes import BEFORE_QUANTIZE, run_passes
from exporter.quantizer import QUANTIZED_OPS, Quantizer, Scorer, refuse_quantized
from exporter.recipes import candidates, node_choices, select
from exporter.smoothing import DEFAULT_ALPHA, smooth_file
from exporter.writer import ArtifactWriter, open_input
from runtimes import open_runner
from runtimes.artifact import Artifact
from runtimes.errors import CheckFailed, UsageError
from runtimes.tasks import get_task

MODES = ("static", "dynamic")
TARGETS = ("cpu", "tensorrt")
METHODS = ("minmax", "entropy", "percentile")
DEFAULT_BUDGET = 0.01  # pooled cosine loss: all-MiniLM-L6-v2's default recipe measures about 0.008
__all__ = ["QuantizeConfig", "quantize", "QUANTIZED_OPS", "DEFAULT_BUDGET"]


@dataclass(frozen=True)
class QuantizeConfig:
    """What to quantize and how. ``None`` leaves a setting to the recipe: ``mode`` dynamic on the
    CPU (static for ``tensorrt``), ``per_channel`` on, ``reduce_range`` off, ``activation`` U8;
    ``select`` measures every open setting instead (``exporter.recipes``).

    The tool's own recipe (no ``mode``) and ``select`` are held to an accuracy budget: the written
    artifact's pooled cosine loss against the float model at most ``accuracy_budget`` (default
    ``max_cosine_loss``, else ``DEFAULT_BUDGET``), and for a classifier top-1 agreement at least
    ``min_agreement``; an explicit ``mode`` is held to ``accuracy_budget`` only when that is given.

    ``smooth`` (None: on for the tool's own recipe, off for a given ``mode`` or ``--target
    tensorrt``; ``select`` measures both) divides the normalized activations by per-channel
    factors folded into the weights (``exporter.smoothing``), ``smooth_alpha`` its strength."""

    mode: str | None = None
    target: str = "cpu"
    method: str = "minmax"
    per_channel: bool | None = None
    reduce_range: bool | None = None  # never assumed from the CPU: U8S8 saturation without VNNI is measured, not guessed
    weight_only: bool = True  # dynamic: quantize only MatMuls whose second input is a weight
    attention: bool = True  # dynamic on a fused graph: the Attention nodes as QAttention
    activation: str | None = None  # static on the cpu target: "u8" (default) or "s8"
    smooth: bool | None = None  # SmoothQuant on normalized activations: on in the tool's recipes, off in a given one
    smooth_alpha: float = DEFAULT_ALPHA
    exclude: tuple[str, ...] = ()
    max_cosine_loss: float | None = None
    max_float_nodes: int | None = None
    accuracy_budget: float | None = None
    min_agreement: float = 0.98
    select: bool = False
    select_rounds: int = 5
    select_seconds: float = 1.0
    calib_rows: int = 128
    eval_rows: int = 64
    batch_size: int = 8
    max_length: int = 128

    def __post_init__(self):
        if self.mode is not None and self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.target not in TARGETS:
            raise UsageError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.method not in METHODS:
            raise UsageError(f"unknown calibration method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.activation not in (None, "u8", "s8"):
            raise UsageError(f"unknown activation type {self.activation!r}; choose u8 or s8")
        if self.target == "tensorrt" and self.mode == "dynamic":
            raise UsageError("--target tensorrt takes --mode static: TensorRT runs explicit (QDQ) quantization only")
        if self.select and (self.target != "cpu" or self.exclude or self.max_float_nodes is not None):
            raise UsageError("--select chooses among CPU recipes as a whole: it does not take --target tensorrt, "
                             "--exclude or --max-float-nodes (use --max-cosine-loss for its budget)")
        for name, v in (("--max-cosine-loss", self.max_cosine_loss), ("--accuracy-budget", self.accuracy_budget)):
            if v is not None and not 0 <= v < 1:
                raise UsageError(f"{name} must be within [0, 1), got {v}")
        if not 0 <= self.min_agreement <= 1:
            raise UsageError(f"--min-agreement must be within [0, 1], got {self.min_agreement}")
        if self.max_float_nodes is not None and self.max_float_nodes < 0:
            raise UsageError(f"--max-float-nodes must be >= 0, got {self.max_float_nodes}")
        if self.calib_rows < 1 or self.eval_rows < 1 or self.batch_size < 1 or self.select_rounds < 1:
            raise UsageError("calibration rows, eval rows, batch size and --select-rounds must be >= 1")
        if not 0 <= self.smooth_alpha <= 1:
            raise UsageError(f"--smooth-alpha must be within [0, 1], got {self.smooth_alpha}")
        if not self.select_seconds > 0:
            raise UsageError(f"--select-seconds must be > 0, got {self.select_seconds}")
        if self.max_length < 2:
            raise UsageError(f"--max-length must be at least 2, got {self.max_length}")

    @property
    def tool_chosen(self) -> bool:
        """The recipe is the tool's (no --mode on the CPU, or --select), so it answers for the accuracy."""
        return self.select or (self.mode is None and self.target == "cpu")

    def budget(self) -> float | None:
        """The pooled cosine loss the written artifact must not exceed (None: no check)."""
        if self.accuracy_budget is not None:
            return self.accuracy_budget
        return (self.max_cosine_loss if self.max_cosine_loss is not None else DEFAULT_BUDGET) if self.tool_chosen else None

    def resolved(self) -> "QuantizeConfig":
        """Every setting left to the recipe filled in (the single recipe run without ``select``)."""
        return replace(self, mode=self.mode or ("static" if self.target == "tensorrt" else "dynamic"),
                       per_channel=True if self.per_channel is None else self.per_channel,
                       reduce_range=bool(self.reduce_range), activation=self.activation or "u8",
                       smooth=self.tool_chosen and self.target == "cpu" if self.smooth is None else self.smooth)


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
    """Quantize an ONNX artifact to INT8; with ``max_cosine_loss``, search for the float nodes; with
    ``select``, build, score and time the candidate recipes and keep the fastest within the budget.

    Raises:
        UsageError: static without calibration data, a quantized or non-ONNX input, contrib ops
            for ``--target tensorrt``, excluded nodes that do not exist, output exists.
        CheckFailed: the cosine target cannot be met within ``max_float_nodes``, or the written
            artifact would miss the accuracy budget (exit 1; nothing is written).
    """
    src = open_input(artifact, "onnx", "quantize")
    rcfg = config.resolved()
    if rcfg.mode == "static" and calib is None:
        raise UsageError("static quantization (--mode static, and --target tensorrt) needs calibration "
                         "data: pass --calib FILE (real texts, a few hundred rows), or --mode dynamic for --target cpu")
    writer = ArtifactWriter(out, force=force, inputs=[src.path])
    ops = op_counts(src.model_file)
    refuse_quantized(ops, src.path)
    if config.target == "tensorrt" and contrib_ops(ops):
        raise UsageError(f"{src.path}: has ONNX Runtime contrib operators {contrib_ops(ops)} that TensorRT cannot parse; "
                         "quantize an artifact made by export or by optimize --target tensorrt")
    with writer.scratch() as work:  # beside the output: same filesystem, swept by the next run if killed
        prepared = work / "float.onnx"
        _preprocess(src.model_file, prepared, has_contrib=bool(contrib_ops(ops)))
        calib_feeds, eval_feeds, timing_feed = _feeds(src, calib, rcfg)
        scorer = Scorer(prepared, eval_feeds, src.task)
        selection, graph, smoothing = None, "input", None
        if config.select:
            q, selection, graph, smoothing = _select(src, work, prepared, config, calib_feeds, calib is not None, scorer,
                                                     timing_feed, progress)
            search = _search(q, scorer, q.nodes(), replace(q.cfg, max_cosine_loss=None), progress)
        else:
            float_path = prepared
            if rcfg.smooth:
                float_path = work / "smoothed.onnx"
                smoothing = smooth_file(prepared, float_path, calib_feeds, rcfg.smooth_alpha)
            q = Quantizer(float_path, work, rcfg, calib_feeds)
            unknown = sorted(set(config.exclude) - set(q.graph.op_of))
            if unknown:
                raise UsageError(f"--exclude names nodes that are not in {src.model_file}: {unknown[:5]}; "
                                 f"see the node names with onnx or in a previous manifest's 'quantization.node_choices'")
            search = _search(q, scorer, [n for n in q.nodes() if n not in set(config.exclude)], rcfg, progress)
        budget = config.budget()

        def fill(tmp):
            q.run(search["quantized_nodes"], tmp / "model.onnx")
            score = scorer.score(tmp / "model.onnx")
            _check_budget(score, budget, config, q.cfg)
            c = q.cfg
            return onnx_manifest(
                tmp, task=src.task, source=src, command=command, checks={"onnx_checker": "skipped: quantized graph"},
                options=asdict(config), parity=_parity(src, score, scorer), quantization={
                    "recipe": "selected (--select)" if config.select else "default" if config.tool_chosen else "given",
                    "graph": "fused by optimize --target cpu" if graph == "fused" else "input",
                    "mode": c.mode, "target": c.target, "method": c.method if c.mode == "static" else None,
                    "per_channel": c.per_channel or c.target == "tensorrt", "reduce_range": c.reduce_range,
                    "activations": "S8" if c.target == "tensorrt" or c.activation == "s8" else "U8",
                    "attention": "QAttention" if "Attention" in q.op_types else None,
                    "smoothing": smoothing,
                    "format": "QDQ" if c.mode == "static" else "dynamic (MatMulInteger)",
                    "accuracy_budget": {"max_cosine_loss": budget,
                                        "min_agreement": config.min_agreement if budget is not None and scorer.task.scores_labels else None},
                    "calibration": {"source": calib.source, "rows": min(len(calib), config.calib_rows),
                                    "hash": calib.fingerprint()} if calib is not None else None,
                    "ops_after": op_counts(tmp / "model.onnx"), **search,
                    "node_choices": node_choices(q, search["quantized_nodes"], config.exclude, search["float_nodes"]),
                    "selection": selection,
                },
            )

        return writer.write(fill, companions_from=src.path)


def _select(src: Artifact, work: Path, prepared: Path, config: QuantizeConfig, calib_feeds, has_calib: bool,
            scorer: Scorer, feed: dict, progress: bool) -> tuple[Quantizer, dict, str, dict | None]:
    """``--select``: the input graph and, for a plain export, its ``optimize --target cpu`` fusion,
    each as it is and smoothed (unless ``smooth`` fixes that axis); every candidate recipe on them
    (``exporter.recipes``); the chosen one's quantizer, graph and smoothing record."""
    from exporter.optimize import optimize

    graphs = {"input": prepared}
    if not contrib_ops(op_counts(src.model_file)):
        fused = optimize(src, work / "fused-artifact", target="cpu", progress=False)
        _preprocess(fused.model_file, work / "fused.onnx", has_contrib=bool(contrib_ops(op_counts(fused.model_file))))
        graphs["fused"] = work / "fused.onnx"
    base = config.resolved()
    quantizers, records = {}, {}
    for g, p in graphs.items():
        for sm in (True, False) if config.smooth is None else (config.smooth,):
            if sm:
                records[g] = smooth_file(p, work / f"{g}-smoothed.onnx", calib_feeds, config.smooth_alpha)
            quantizers[g, sm] = Quantizer(work / f"{g}-smoothed.onnx" if sm else p, work / (g + "-smoothed" * sm),
                                          base, calib_feeds)
    cands = candidates(config, list(graphs), {g: "Attention" in q.graph.op_of.values() for (g, _), q in quantizers.items()},
                       static=has_calib)
    budget = config.budget()
    chosen, table = select(quantizers, cands, base, scorer, feed, budget=budget, min_agreement=config.min_agreement,
                           float_path=prepared, progress=progress)
    if chosen is None:
        best = max(table["candidates"], key=lambda r: r["cosine"])
        raise CheckFailed(f"no candidate recipe meets the accuracy budget (pooled cosine loss <= {budget}"
                          f"{', top-1 agreement >= ' + str(config.min_agreement) if scorer.task.scores_labels else ''}); the "
                          f"closest, {best['name']}, has cosine {best['cosine']:.4f}: raise --max-cosine-loss, or give --mode "
                          "dynamic --max-cosine-loss X to keep the costliest nodes in float; nothing written")
    q = quantizers[chosen.graph, chosen.smooth].with_config(chosen.config(base))
    return q, table, chosen.graph, records[chosen.graph] if chosen.smooth else None


def _check_budget(score: dict, budget: float | None, config: QuantizeConfig, used: QuantizeConfig) -> None:
    """Raise CheckFailed (one line, what to do) when the written model would miss the budget."""
    if budget is None:
        return
    loss, agree = 1.0 - score["cosine"], score["agreement"]
    if loss <= budget and (agree is None or agree >= config.min_agreement):
        return
    miss = (f"pooled cosine {score['cosine']:.4f} (loss {loss:.4f} > {budget})" if loss > budget else
            f"top-1 agreement with the float model {agree:.3f} < {config.min_agreement}")
    todo = ("raise --max-cosine-loss" if config.select else
            "try --select (measures the candidate recipes and keeps the fastest within budget), or "
            f"--max-cosine-loss {budget} to keep the costliest nodes in float")
    raise CheckFailed(f"the {used.mode} INT8 recipe misses the accuracy budget: {miss} on the calibration texts; "
                      f"{todo}; nothing written")


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


def _feeds(src: Artifact, texts: TextDataset | None, cfg: QuantizeConfig) -> tuple[list[dict], list[dict], dict]:
    """Calibration batches, scoring batches, and one batch padded to ``max_length`` for ``select``'s timing."""
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
    fixed = (cfg.mode == "static" or cfg.select) and cfg.method != "minmax"
    n = min(len(data), cfg.calib_rows)
    calib = encode(data.take(-(-n // cfg.batch_size) * cfg.batch_size if fixed else n), fixed=fixed)
    evald = encode(data.take(min(len(data), cfg.eval_rows)), fixed=False)
    timing = task.feeds_for(task.encode(processor, data.take(cfg.batch_size), max_length=cfg.max_length, pad_to_max=True),
                            specs, src.name)
    return calib, evald, timing


def _search(q: Quantizer, scorer: Scorer, base: list[str], cfg: QuantizeConfig, progress: bool) -> dict:
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


def _parity(src: Artifact, score: dict, scorer: Scorer) -> dict:
    return {"reference": f"{src.name} @ onnxruntime:cpu", "metric": "mean cosine of masked-mean-pooled outputs",
            "mean_cosine": score["cosine"], "top1_agreement": score["agreement"], "rows": scorer.rows}
