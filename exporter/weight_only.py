"""Weight-only quantization of an ONNX LLM: MatMul weights to INT4 or INT8 ``MatMulNBits`` blocks
(ONNX Runtime's ``matmul_nbits_quantizer``; GPTQ is ours, ``exporter/gptq.py``), activations stay float.

One config object per technique, as torchao does: ``WeightOnlyConfig`` validates itself and the
handler does the work. The tied lm_head (a Transpose of the embedding table in optimum's export) is
given its own constant first, so it is quantized too (``exporter/passes/transposed_weights.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.gguf_weights import integer_zero_points
from exporter.manifest import onnx_manifest
from exporter.onnx_file import check_onnx, save_model
from exporter.passes import AFTER_WEIGHT_ONLY, run_passes
from exporter.passes.transposed_weights import fold_transposed_matmul_weights
from exporter.writer import ArtifactWriter, open_input
from runtimes.artifact import Artifact
from runtimes.errors import CheckFailed, UsageError

if TYPE_CHECKING:
    from evaluation.data import TextDataset

ALGORITHMS = ("rtn", "hqq", "gptq")
FORMATS = ("matmulnbits", "qdq")  # ONNX Runtime's contrib op, or standard DequantizeLinear -> MatMul for TensorRT


@dataclass(frozen=True)
class WeightOnlyConfig:
    """``bits`` 4 or 8; ``block_size`` weights share one scale (a power of two, >= 16);
    ``symmetric`` (no zero point); ``algorithm`` ``rtn`` (round to nearest, blockwise), ``hqq``
    (half-quadratic, 4 bits, asymmetric) or ``gptq`` (RTN's grid, codes chosen against the Hessians
    of ``calib_rows`` calibration texts); ``exclude``: MatMul node names kept in float; ``format``
    ``matmulnbits`` (ONNX Runtime's contrib op) or ``qdq`` (``DequantizeLinear -> MatMul`` in the
    layout TensorRT takes: ``exporter/weight_qdq.py``). ``block_size`` None: 32, or 128 for ``qdq``."""

    bits: int = 4
    block_size: int | None = None
    symmetric: bool = True
    algorithm: str = "rtn"
    exclude: tuple[str, ...] = ()
    accuracy_level: int | None = None  # MatMulNBits' compute type on CPU: None (float) or 4 (int8 activations)
    # per MatMul: (part of a node name, level), the last that matches wins (lm_head at 4, the rest exact)
    accuracy_levels: tuple[tuple[str, int], ...] = ()
    max_ppl_increase: float | None = None  # the search's budget on the calibration texts (relative: 0.02 is 2%)
    max_promoted: int = 32  # the search keeps at most this many MatMuls out of INT4
    search_rows: int = 8  # calibration texts the search scores on
    calib_rows: int = 32  # calibration texts GPTQ collects its Hessians on (one at a time, up to 128 tokens each)
    search_length: int = 40  # tokens of each (one forward pass per MatMul: SmolLM2 has 211)
    gguf: str | None = None  # carry this GGUF file's blocks over exactly ("source": the one the model was imported from)
    format: str = "matmulnbits"

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise UsageError(f"--bits {self.bits}: weight-only quantization takes 4 or 8")
        if self.format not in FORMATS:
            raise UsageError(f"weight-only format {self.format!r}: choose one of {', '.join(FORMATS)}")
        if self.format == "qdq":
            self._check_qdq()
        elif self.block_size is None:
            object.__setattr__(self, "block_size", 32)
        if self.block_size is not None and (self.block_size < 16 or self.block_size & (self.block_size - 1)):
            raise UsageError(f"--block-size {self.block_size}: give a power of two, at least 16")
        if self.algorithm not in ALGORITHMS:
            raise UsageError(f"--algorithm {self.algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
        if self.algorithm == "gptq":
            if self.format != "matmulnbits":
                raise UsageError("--algorithm gptq writes MatMulNBits for ONNX Runtime; use it with no --target tensorrt")
            if self.calib_rows < 1:
                raise UsageError(f"--calib-rows {self.calib_rows}: GPTQ needs at least 1 calibration text")
        if self.algorithm == "hqq" and (self.bits != 4 or self.symmetric):
            raise UsageError("--algorithm hqq quantizes to 4 bits with a zero point: pass --bits 4 --asymmetric")
        if self.accuracy_level not in (None, 0, 1, 2, 3, 4):
            raise UsageError(f"--accuracy-level {self.accuracy_level}: give 0 (float compute) to 4 (int8 activations)")
        for name, level in self.accuracy_levels:
            if not name or level not in (0, 1, 2, 3, 4):
                raise UsageError(f"--accuracy-level {name}={level}: give MATMUL=LEVEL with a level 0 (float compute) to 4")
            if self.gguf is not None and level not in (0, 4):
                raise UsageError(f"--from-gguf: --accuracy-level {name}={level}: give 0 (exact) or 4 (int8 activations)")
        if self.gguf is not None and self.format != "matmulnbits":
            raise UsageError("--from-gguf writes MatMulNBits for ONNX Runtime; not with --target tensorrt")
        if self.gguf is not None and self.max_ppl_increase is not None:
            raise UsageError("--from-gguf writes the file's own blocks (no rounding to search over); drop --max-ppl-increase")
        if self.gguf is not None and self.accuracy_level not in (None, 0, 4):
            raise UsageError(f"--from-gguf: --accuracy-level {self.accuracy_level}: give 0 (exact) or 4 (int8 activations)")
        if self.max_ppl_increase is not None:
            if not self.max_ppl_increase >= 0:
                raise UsageError(f"--max-ppl-increase {self.max_ppl_increase}: give a relative increase >= 0 (2% or 0.02)")
            if self.bits != 4:
                raise UsageError("--max-ppl-increase searches INT4 models: pass --bits 4")
            if self.max_promoted < 1:
                raise UsageError(f"--max-promoted {self.max_promoted}: give at least 1")

    def _check_qdq(self) -> None:
        from exporter.weight_qdq import TRT_INT4_BLOCK_SIZES

        if not self.symmetric or self.algorithm == "hqq":
            raise UsageError("--asymmetric/--algorithm hqq with --target tensorrt: TensorRT dequantizes symmetric weights "
                             "only (zero point 0); drop them")
        if self.accuracy_level or self.accuracy_levels:
            raise UsageError(f"--accuracy-level {self.accuracy_level or self.accuracy_levels[0][1]} is a MatMulNBits "
                             "setting; drop it with --target tensorrt")
        if self.max_ppl_increase is not None:
            raise UsageError("--max-ppl-increase searches the MatMulNBits form; not with --target tensorrt yet")
        if self.bits == 8 and self.block_size is not None:
            raise UsageError(f"--block-size {self.block_size} with --bits 8 --target tensorrt: TensorRT dequantizes INT8 "
                             "weights per output channel, not in blocks; drop --block-size")
        if self.bits == 4 and self.block_size is None:
            object.__setattr__(self, "block_size", 128)
        if self.bits == 4 and self.block_size not in TRT_INT4_BLOCK_SIZES:
            raise UsageError(f"--block-size {self.block_size} with --target tensorrt: TensorRT's INT4 block dequantization "
                             f"takes block sizes {' or '.join(map(str, TRT_INT4_BLOCK_SIZES))}")

    def algo_config(self, bits: int | None = None):
        from onnxruntime.quantization import matmul_nbits_quantizer as mq

        if self.algorithm == "hqq" and (bits or self.bits) == self.bits:  # the search's INT8 promotions: RTN
            return mq.HQQWeightOnlyQuantConfig(block_size=self.block_size, bits=self.bits)
        return mq.DefaultWeightOnlyQuantConfig(block_size=self.block_size, is_symmetric=self.symmetric,
                                               bits=bits or self.bits, accuracy_level=self.accuracy_level or None)


def quantize_weights(artifact: str | os.PathLike | Artifact, out: str | os.PathLike, config: WeightOnlyConfig, *,
                     calib: TextDataset | None = None, force: bool = False, command: str | None = None,
                     log=lambda msg: None, progress: bool = False) -> Artifact:
    """Write ``artifact``'s model with its MatMul weights in ``config.bits`` to ``out``.

    Raises:
        UsageError: not an ONNX artifact, an excluded name that is no MatMul, output exists.
        CheckFailed: ``config.max_ppl_increase`` not met with ``config.max_promoted`` MatMuls kept out of INT4,
            or not met by the written model (measured again on the calibration texts; nothing is written).
    """
    import onnx

    from exporter.quantizer import refuse_quantized

    src = open_input(artifact, "onnx", "quantize")
    lineage, imported = gguf_lineage(src)
    gguf_file = Path(config.gguf) if config.gguf not in (None, "source") else imported.get("path")
    # what this run reads is an input --force may not replace: the lineage's manifests, the GGUF file
    writer = ArtifactWriter(out, force=force, inputs=[src.path, *lineage, gguf_file])
    model = onnx.load(str(src.model_file))
    refuse_quantized({n.op_type for n in model.graph.node}, src.path)
    matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    if unknown := sorted(set(config.exclude) - matmuls):
        raise UsageError(f"--exclude {unknown[0]!r}: no MatMul of {src.model_file} has that name")
    for name, _ in config.accuracy_levels:
        if not any(name in m for m in matmuls):
            raise UsageError(f"--accuracy-level {name}=...: no MatMul of {src.model_file} has {name!r} in its name")
    folded = fold_transposed_matmul_weights(model)
    if config.gguf is not None:
        return _from_gguf(model, src, writer, config, folded.modified, command, (lineage, imported), log)
    if hint := _gguf_hint(lineage, imported):
        log(hint)
    consts = {i.name for i in model.graph.initializer}
    weights = {n.name: n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in consts}
    candidates = list(weights)
    searched, gptq, gptq_record = None, {}, {}
    if config.algorithm == "gptq":  # every candidate's codes once, from the float model: the search scores them as written
        gptq, gptq_record = _gptq(model, [n for n in candidates if n not in config.exclude], src, calib, config, log,
                                  progress)
    if config.max_ppl_increase is not None:
        from exporter.gptq import dequantize

        int4 = {n: dequantize(*gptq[n][:3], gptq[n][3]) for n in gptq} if gptq else None
        if config.algorithm == "hqq":  # each candidate's INT4 weights as HQQ will write them
            from onnx import numpy_helper

            from exporter.weight_search import hqq_fake_quant

            inits = {i.name: i for i in model.graph.initializer}
            int4 = {n: hqq_fake_quant(numpy_helper.to_array(inits[w]), config.bits, config.block_size)
                    for n, w in weights.items() if n not in config.exclude}
            log(f"HQQ: the INT4 weights of {len(int4)} MatMuls")
        searched, scorer = _search(model, {n: w for n, w in weights.items() if n not in config.exclude}, src, calib,
                                   config, log, int4)
    int8 = sorted(n for n, c in (searched.choices if searched else {}).items() if c == "int8")
    float_kept = sorted({*config.exclude, *(n for n, c in (searched.choices if searched else {}).items() if c == "float")})

    skipped = {}  # MatMuls TensorRT could not take in the QDQ layout, and why
    if config.format == "qdq":
        from exporter.weight_qdq import ineligible

        skipped = ineligible(model, {n: w for n, w in weights.items() if n not in config.exclude}, config.bits,
                             config.block_size)
        float_kept = sorted({*float_kept, *skipped})
        if skipped and not set(candidates) - set(float_kept):
            name, why = next(iter(skipped.items()))
            raise UsageError(f"{src.model_file}: no MatMul weight fits TensorRT's INT{config.bits} layout (first: {name}: "
                             f"{why}){'; try --block-size 64 or --bits 8' if config.bits == 4 else ''}")

    def fill(tmp):
        from onnxruntime.quantization import matmul_nbits_quantizer as mq

        from exporter.quiet import quiet_export

        result = model
        with quiet_export():
            if config.format == "qdq":
                result = _qdq(model, config, [n for n in candidates if n not in float_kept])
            else:
                if int8:  # first the promoted MatMuls in INT8, then the rest in INT4 (MatMulNBits is no MatMul any more)
                    q = mq.MatMulNBitsQuantizer(result, nodes_to_exclude=sorted(set(candidates) - set(int8)),
                                                algo_config=config.algo_config(bits=8))
                    q.process()
                    result = q.model.model
                if config.algorithm == "gptq":
                    from exporter.gptq import write_matmulnbits

                    write_matmulnbits(result, {n: c for n, c in gptq.items() if n not in {*float_kept, *int8}},
                                      bits=config.bits, block_size=config.block_size, symmetric=config.symmetric)
                else:
                    q = mq.MatMulNBitsQuantizer(result, block_size=config.block_size, is_symmetric=config.symmetric,
                                                accuracy_level=config.accuracy_level or None, nodes_to_exclude=float_kept,
                                                algo_config=config.algo_config())
                    q.process()
                    result = q.model.model
        quantized = sum(n.op_type == ("DequantizeLinear" if config.format == "qdq" else "MatMulNBits")
                        for n in result.graph.node)
        levels = set_accuracy_levels(result, config) if config.format == "matmulnbits" else {}
        # HQQ's float zero points: integer ones plus the remainder (ONNX Runtime's fast CPU kernels)
        zero_points = integer_zero_points(result) if config.format == "matmulnbits" else {}
        # 8 bits at float activations: two exact 4-bit kernels (ONNX Runtime's 8-bit one is slow there)
        nibbles = run_passes(AFTER_WEIGHT_ONLY, result).count if config.format == "matmulnbits" else 0
        path = tmp / "model.onnx"
        save_model(result, path, external=result.ByteSize() > 1_800_000_000)  # protobuf's 2 GB limit
        checks = check_onnx(path)
        record = _search_record(searched, config, calib) if searched else None
        if searched:  # the budget holds for the written model, not only for the search's de-quantized weights
            record["ppl_change_built"], record["kl_mean_built"] = scorer.score_model(path)
            log(f"built model: perplexity {record['ppl_change_built']:+.2%} on the calibration texts "
                f"(the search's weights: {searched.ppl_change:+.2%})")
            if record["ppl_change_built"] > config.max_ppl_increase:
                raise CheckFailed(f"--max-ppl-increase {config.max_ppl_increase:.2%}: the built model measures "
                                  f"{record['ppl_change_built']:+.2%} on the calibration texts (the search's de-quantized "
                                  f"weights {searched.ppl_change:+.2%}); lower --accuracy-level or tighten the budget")
        return onnx_manifest(
            tmp, task=src.task, source=src, command=command, checks=checks,
            options={"mode": "weight-only", "bits": config.bits, "block_size": config.block_size,
                     "symmetric": config.symmetric, "algorithm": config.algorithm, "exclude": list(config.exclude),
                     "accuracy_level": config.accuracy_level or 0, "accuracy_levels": dict(config.accuracy_levels),
                     "max_ppl_increase": config.max_ppl_increase,
                     "max_promoted": config.max_promoted if searched else None, "format": config.format},
            parity=None,
            quantization={"kind": _kind(config), "format": config.format, "matmuls_with_constant_weights":
                          len(candidates), "quantized": quantized, "kept_float": float_kept, "kept_int8": int8,
                          "accuracy_level": config.accuracy_level or 0, "accuracy_levels": levels,
                          "int8_as_two_int4_kernels": nibbles,
                          "float_zero_points_as_integer": zero_points or None,
                          "weight_only": record,
                          "gptq": gptq_record or None,
                          "kept_float_why": skipped,
                          "lm_head": "folded the tied embedding's Transpose into a constant, then quantized"
                          if folded.modified else "had a constant weight already"},
        )

    return writer.write(fill, companions_from=src.path)


def level_for(matmul: str, config: WeightOnlyConfig) -> int:
    """The ``accuracy_level`` of the MatMulNBits that replaces MatMul node ``matmul``: the last
    ``config.accuracy_levels`` entry whose name is part of ``matmul``'s, else ``config.accuracy_level``."""
    level = config.accuracy_level or 0
    for name, override in config.accuracy_levels:
        if name in matmul:
            level = override
    return level


def set_accuracy_levels(model, config: WeightOnlyConfig) -> dict[str, int]:
    """Set every MatMulNBits' ``accuracy_level`` (ONNX Runtime's quantizer names one after its MatMul
    plus ``_Q4``/``_Q8``); returns the MatMuls whose level differs from the default."""
    from onnx import helper

    default, changed = config.accuracy_level or 0, {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        matmul = node.name.rpartition("_Q")[0] or node.name
        level = level_for(matmul, config)
        attrs = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend([*attrs, helper.make_attribute("accuracy_level", level)])
        if level != default:
            changed[matmul] = level
    return dict(sorted(changed.items()))


def _kind(config: WeightOnlyConfig) -> str:
    if config.format == "matmulnbits":
        return f"weight-only int{config.bits} (MatMulNBits)"
    layout = f"blocked on K, block {config.block_size}" if config.bits == 4 else "per output channel"
    return f"weight-only int{config.bits} (DequantizeLinear -> MatMul, {layout}, symmetric; for TensorRT)"


def _qdq(model, config: WeightOnlyConfig, names: list[str]):
    from exporter.weight_qdq import quantize_int4_blocked, quantize_int8_per_channel

    if config.bits == 4:
        return quantize_int4_blocked(model, names, config.block_size)
    return quantize_int8_per_channel(model, names)


def _search(model, weights: dict[str, str], src, calib: TextDataset | None, config: WeightOnlyConfig, log, int4=None):
    from evaluation.data import load_texts
    from exporter.weight_search import Scorer, search
    from runtimes.tasks import get_task

    task = get_task("text-generation")
    data = calib if calib is not None else load_texts(None)
    data = type(data)(source=data.source, texts=tuple(t for t in data.texts if t.strip())[:config.search_rows])
    encoded = task.encode_batches(task.load_processor(src.path), data, 4, max_length=config.search_length)
    log(f"measuring {len(weights)} MatMuls alone in INT4 on {len(data.texts)} calibration texts")
    scorer = Scorer(model, weights, encoded)
    return search(scorer, config.max_ppl_increase, config.max_promoted, config.block_size, config.symmetric, log,
                  int4), scorer


def _gptq(model, names: list[str], src, calib: TextDataset | None, config: WeightOnlyConfig, log,
          progress: bool) -> tuple[dict, dict]:
    """Our GPTQ's codes (``exporter/gptq.py``) for ``names`` of ``model``, and the manifest's record."""
    import time

    from exporter.gptq import LAZY_COLUMNS, PERCDAMP, gptq_weights

    two_d, wanted = {i.name for i in model.graph.initializer if len(i.dims) == 2}, set(names)
    names = [n.name for n in model.graph.node if n.name in wanted and n.input[1] in two_d]
    feeds = _calibration_feeds(model, src, calib, config)
    tokens = sum(int(f["input_ids"].size) for f in feeds)
    log(f"GPTQ: Hessians of {len(names)} MatMuls' inputs on {len(feeds)} calibration texts ({tokens} tokens)")
    start = time.perf_counter()
    written = gptq_weights(model, names, feeds, bits=config.bits, block_size=config.block_size,
                           symmetric=config.symmetric, act_order=True, progress=progress)
    return written, {"implementation": "enginewright (exporter/gptq.py): RTN's per-block grid, codes chosen by GPTQ, "
                                       "one rounding",
                     "calibration": calib.describe() if calib is not None else "built-in sample sentences",
                     "calibration_rows": len(feeds), "calibration_tokens": tokens, "max_tokens": 128,
                     "matmuls": len(written), "act_order": True, "percdamp": PERCDAMP, "lazy_columns": LAZY_COLUMNS,
                     "seconds": round(time.perf_counter() - start, 1)}


def _calibration_feeds(model, src, calib: TextDataset | None, config: WeightOnlyConfig) -> list[dict]:
    """GPTQ's calibration prefills: ``config.calib_rows`` texts of ``calib`` (default: the sample
    sentences), one per batch so no padding enters the Hessians, up to 128 tokens each."""
    from evaluation.data import load_texts
    from exporter.weight_search import prefill_feeds
    from runtimes.tasks import get_task

    task = get_task("text-generation")
    data = calib if calib is not None else load_texts(None)
    data = type(data)(source=data.source, texts=tuple(t for t in data.texts if t.strip())[:config.calib_rows])
    return prefill_feeds(model, task.encode_batches(task.load_processor(src.path), data, 1, max_length=128))


def _search_record(searched, config: WeightOnlyConfig, calib: TextDataset | None) -> dict:
    int4 = {"gptq": "GPTQ's codes", "hqq": "HQQ"}.get(config.algorithm, "round to nearest")
    return {"method": f"each MatMul alone in INT4 ({int4}, de-quantized), cost = mean KL vs float on the calibration "
                      "texts; costliest promoted to INT8, then float, until the budget is met",
            "budget_ppl_increase": config.max_ppl_increase, "max_promoted": config.max_promoted,
            "calibration": calib.describe() if calib is not None else "built-in sample sentences",
            "calibration_rows": config.search_rows, "calibration_max_tokens": config.search_length, **searched.to_dict()}


def gguf_lineage(src: Artifact, steps: int = 16) -> tuple[list[Path], dict]:
    """The model directories up ``src``'s lineage (its ``source``, that one's ``source``...) as far as
    the one ``import-gguf`` wrote, and that one's source record (``{}`` when none is a GGUF import):
    an export, optimized, then quantized, still finds the GGUF its weights came from."""
    from runtimes.artifact import read_json

    walked, record = [], src.manifest.get("source") or {}
    for _ in range(steps):
        model_dir = Path(record.get("path") or "")
        manifest = model_dir / "manifest.json"
        if not model_dir.name or model_dir in walked or not manifest.is_file():
            break
        walked.append(model_dir)
        record = read_json(manifest, "manifest").get("source") or {}
        if record.get("format") == "gguf":
            return walked, record
    return walked, {}


def _gguf_hint(walked: list[Path], record: dict) -> str | None:
    """A note when the model was imported from a quantized GGUF file (``gguf_lineage``'s answer):
    rounding its de-quantized weights again lands on another grid (SmolLM2's Q4_1 file: +34%
    perplexity for INT4 RTN)."""
    if not record or record.get("file_type") in ("F32", "F16", "BF16"):
        return None
    return (f"note: {walked[-1]} was imported from {record.get('path')} ({record.get('file_type')}); rounding its "
            "de-quantized weights again loses accuracy, --from-gguf source writes the file's own blocks exactly")


def gguf_source(src: Artifact, given: str, lineage: tuple[list[Path], dict]) -> Path:
    """The GGUF file ``--from-gguf`` names: a path, or ``source``: the file the artifact's model was
    imported from (``import-gguf`` records it with its sha256; found however many steps up the
    lineage, ``gguf_lineage(src)``), checked unchanged.

    Raises:
        UsageError: no such file, no GGUF in the artifact's lineage, or the file changed since.
    """
    from runtimes.artifact import imported_gguf

    if given != "source":
        path = Path(given)
        if not path.is_file():
            raise UsageError(f"--from-gguf {given}: no such file")
        return path
    walked, record = lineage
    model_dir = walked[-1] if walked else "?"
    return imported_gguf(record, not_imported=f"--from-gguf source: no model in {src.path}'s lineage "
                         f"({' <- '.join(map(str, walked)) or 'none recorded'}) was imported from a GGUF file; "
                         "give the file's path",
                         changed=f"--from-gguf source: {record.get('path')}, which {model_dir} was imported from, is "
                         "missing or changed; give the file's path")


def _from_gguf(model, src: Artifact, writer: ArtifactWriter, config: WeightOnlyConfig, folded: bool, command,
               lineage: tuple[list[Path], dict], log=lambda msg: None):
    from transformers import AutoConfig

    from exporter.gguf_weights import carry_over

    path = gguf_source(src, config.gguf, lineage)
    level = config.accuracy_level or 0
    if config.exclude:
        keep = set(config.exclude)
        for n in model.graph.node:  # an excluded MatMul is simply not offered to the carry-over
            if n.name in keep:
                n.name = n.name + "#excluded"
    record = carry_over(model, path, AutoConfig.from_pretrained(src.path, trust_remote_code=False),
                        levels=lambda matmul: level_for(matmul, config))
    for n in model.graph.node:
        n.name = n.name.removesuffix("#excluded")
    changed = {m: v for m, v in sorted(record.pop("levels").items()) if v != level}
    unmatched = [m for m in record["float"] if m not in config.exclude]
    if len(unmatched) > len(record["matched"]):
        log(f"warning: only {len(record['matched'])} of {len(record['matched']) + len(unmatched)} MatMuls equal a tensor "
            f"of {path}; the rest stay float. Was the model imported from another file, or changed since (fine-tuned, "
            "pruned)? --from-gguf source finds the file it was imported from")

    def fill(tmp):
        target = tmp / "model.onnx"
        save_model(model, target, external=model.ByteSize() > 1_800_000_000)
        checks = check_onnx(target)
        kinds = ", ".join(f"{count} {kind}" for kind, count in record["by_type"].items())
        return onnx_manifest(
            tmp, task=src.task, source=src, command=command, checks=checks,
            options={"mode": "weight-only", "from_gguf": str(path), "exclude": list(config.exclude),
                     "accuracy_level": level, "accuracy_levels": dict(config.accuracy_levels)},
            parity=None,
            quantization={"kind": f"weight-only, the GGUF file's own blocks ({kinds})",
                          "matmuls_with_constant_weights": len(record["matched"]) + len(record["float"]),
                          "quantized": len(record["matched"]), "kept_float": record["float"], "kept_int8": [],
                          "accuracy_level": level, "accuracy_levels": changed, "gguf": record,
                          "lm_head": "folded the tied embedding's Transpose into a constant, then carried over"
                          if folded else "had a constant weight already"},
        )

    return writer.write(fill, companions_from=src.path)
