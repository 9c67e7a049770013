"""The perplexity-budgeted search of ``quantize --mode weight-only --max-ppl-increase``: which MatMuls
stay INT8 or float so that the INT4 model's perplexity on the calibration texts is within the budget.

Sensitivity is measured end to end, one MatMul at a time, without rebuilding anything: the float
model's MatMul weights become overridable initializers (graph inputs with a default), so one ONNX
Runtime session scores any mix of float, INT4 and INT8 weights by feeding their fake-quantized
copies. The fake quantization calls the same C kernel as ``MatMulNBitsQuantizer`` (RTN, blockwise)
and de-quantizes in numpy, so the searched model is the built one up to the kernels' float order.
Each MatMul's cost is the mean KL(float || model with only that MatMul in INT4) over the calibration
tokens; the costliest go to INT8 (then, if INT8 of all ``max_promoted`` is not enough, to float,
costliest first) until the whole model's perplexity increase is within the budget: one at a time for
the first four, then a quarter more of those already promoted per step, so that a search that needs
many promotions takes tens of steps, not hundreds. On SmolLM2-135M (211 MatMuls) that is one forward
pass per MatMul plus one per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evaluation.llm_metrics import log_softmax
from runtimes.errors import CheckFailed


def prefill_feeds(model, encoded: list[dict]) -> list[dict[str, np.ndarray]]:
    """The full feeds of a text-generation ONNX ``model`` (its graph inputs) for tokenized batches:
    ids, mask, positions and an empty cache (a prefill)."""
    from runtimes.generation import positions

    inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    feeds = []
    for enc in encoded:
        ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
        f = {"input_ids": ids, "attention_mask": mask}
        if "position_ids" in inputs:
            f["position_ids"] = positions(mask, 0)
        for name, dims in inputs.items():
            if name.startswith("past_key_values."):
                f[name] = np.zeros((ids.shape[0], dims[1], 0, dims[3]), dtype=np.float32)
        feeds.append(f)
    return feeds


def fake_quant(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> np.ndarray:
    """``w`` [K, N] quantized blockwise along K as ``MatMulNBitsQuantizer`` does (RTN), de-quantized."""
    from exporter.gptq import dequantize, rtn_blocks

    return dequantize(*rtn_blocks(w, bits, block_size, symmetric), w.shape[0])


def hqq_fake_quant(w: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """``w`` [K, N] quantized as ONNX Runtime's HQQ quantizer writes it (its own routine, asymmetric,
    float zero points), de-quantized: ``(q - zero) * scale`` per block along K."""
    import torch
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    k, n = w.shape
    hqq = mq.HQQWeightOnlyQuantizer(mq.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits))
    q, scale, zero = hqq.quantize_internal(torch.from_numpy(np.ascontiguousarray(w.T)), bits=bits, group_size=block_size)
    blocks = scale.shape[1]
    codes = q.reshape(n, blocks, block_size).float()
    return ((codes - zero[..., None]) * scale[..., None]).reshape(n, -1)[:, :k].T.numpy().astype(np.float32)


class Scorer:
    """One session of the float model whose MatMul weights can be overridden; scores any weights
    mix against the float model's next-token distributions on ``encoded`` batches."""

    def __init__(self, model, weights: dict[str, str], encoded: list[dict], threads: int | None = None):
        import onnx
        import onnxruntime as ort

        model = onnx.ModelProto.FromString(model.SerializeToString())
        inits = {i.name: i for i in model.graph.initializer}
        present = {i.name for i in model.graph.input}
        for name in sorted(set(weights.values()) - present):
            model.graph.input.append(onnx.helper.make_tensor_value_info(name, inits[name].data_type, list(inits[name].dims)))
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.weights = weights  # MatMul node -> its weight initializer
        self.float = {n: onnx.numpy_helper.to_array(inits[w]) for n, w in weights.items()}
        self.feeds = [(f, f["attention_mask"].astype(bool)) for f in prefill_feeds(model, encoded)]
        self.ref = [self._logprobs(f, real, self.session.run(["logits"], f)[0]) for f, real in self.feeds]
        self.ref_nll = self._nll(self.ref)

    @staticmethod
    def _logprobs(feeds, real, logits):
        return [(log_softmax(logits[i][real[i]]), feeds["input_ids"][i][real[i]]) for i in range(len(logits))]

    @staticmethod
    def _nll(batches):
        nll = count = 0
        for batch in batches:
            for lp, ids in batch:
                nll += float(-lp[np.arange(len(ids) - 1), ids[1:]].sum())
                count += len(ids) - 1
        return nll / max(count, 1)

    def score_model(self, path) -> tuple[float, float]:
        """(perplexity change, mean KL) of the ONNX model at ``path`` (the one written, same IO) on the
        same texts against the same float reference: what the search's de-quantized weights stood for."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = self.session.get_session_options().intra_op_num_threads
        built = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return self._compare(lambda f: built.run(["logits"], f)[0])

    def score(self, overrides: dict[str, np.ndarray]) -> tuple[float, float]:
        """(perplexity change, mean KL) with ``overrides`` (MatMul node -> weight); the rest float."""
        feeds_w = {self.weights[n]: w for n, w in overrides.items()}
        return self._compare(lambda f: self.session.run(["logits"], {**f, **feeds_w})[0])

    def _compare(self, logits_of) -> tuple[float, float]:
        out, kl, positions = [], 0.0, 0
        for (f, real), ref in zip(self.feeds, self.ref):
            batch = self._logprobs(f, real, logits_of(f))
            for (lp, _), (rlp, _) in zip(batch, ref):
                kl += float((np.exp(rlp) * (rlp - lp)).sum())
                positions += len(lp)
            out.append(batch)
        return float(np.expm1(self._nll(out) - self.ref_nll)), kl / max(positions, 1)


@dataclass
class SearchResult:
    """Each MatMul's choice (``int4``/``int8``/``float``), its measured cost alone in INT4, the
    promotion steps and the perplexity change the search measured with the final choices."""

    choices: dict[str, str]
    costs: dict[str, dict]
    steps: list[dict] = field(default_factory=list)
    ppl_change: float = 0.0
    kl_mean: float = 0.0
    all_int4_ppl_change: float = 0.0

    def to_dict(self) -> dict:
        kept = {n: c for n, c in self.choices.items() if c != "int4"}
        return {"ppl_change_calibration": self.ppl_change, "kl_mean_calibration": self.kl_mean,
                "all_int4_ppl_change_calibration": self.all_int4_ppl_change,
                "counts": {c: sum(v == c for v in self.choices.values()) for c in ("int4", "int8", "float")},
                "kept": {n: {"choice": c, "why": f"alone in INT4: KL {self.costs[n]['kl']:.3g}, perplexity "
                             f"{self.costs[n]['ppl_change']:+.2%} (rank {self.costs[n]['rank']})"} for n, c in kept.items()},
                "steps": self.steps, "costs": self.costs}


def search(scorer: Scorer, budget: float, max_promoted: int, block_size: int, symmetric: bool,
           log=lambda msg: None, int4: dict[str, np.ndarray] | None = None) -> SearchResult:
    """Greedy promotion of the costliest MatMuls until the perplexity change is within ``budget``.
    ``int4``: each MatMul's INT4 weights as they will be written (GPTQ's), default round to nearest.

    Raises:
        CheckFailed: ``max_promoted`` promotions (INT8, then float) do not meet the budget.
    """
    names = list(scorer.weights)
    q4 = {n: int4[n] if int4 is not None else fake_quant(scorer.float[n], 4, block_size, symmetric) for n in names}
    costs = {}
    for k, n in enumerate(names):
        ppl, kl = scorer.score({n: q4[n]})
        costs[n] = {"kl": kl, "ppl_change": ppl}
        if k % 20 == 0:
            log(f"  sensitivity {k + 1}/{len(names)}")
    order = sorted(names, key=lambda n: -costs[n]["kl"])
    for rank, n in enumerate(order, 1):
        costs[n]["rank"] = rank
    choices = dict.fromkeys(names, "int4")

    q8 = {}

    def measure(step: str):
        for n in (n for n, c in choices.items() if c == "int8" and n not in q8):
            q8[n] = fake_quant(scorer.float[n], 8, block_size, symmetric)
        weights = {n: q4[n] if c == "int4" else q8[n] if c == "int8" else scorer.float[n] for n, c in choices.items()}
        ppl, kl = scorer.score(weights)
        result.steps.append({"step": step, "ppl_change": ppl, "kl_mean": kl})
        log(f"  {step}: perplexity {ppl:+.2%}, KL {kl:.4f}")
        return ppl, kl

    result = SearchResult(choices, costs)
    ppl, kl = measure("all int4")
    result.all_int4_ppl_change = ppl
    plan = [(n, "int8") for n in order[:max_promoted]] + [(n, "float") for n in order[:max_promoted]]
    done = 0
    step, before = [], {}
    while ppl > budget and done < len(plan):
        step = plan[done:done + max(1, done // 4)]  # one at a time first, then a quarter more of those done
        before = {n: choices[n] for n, _ in step}
        for n, choice in step:
            choices[n] = choice
        done += len(step)
        ppl, kl = measure(f"{step[0][0]} -> {step[0][1]}" if len(step) == 1 else
                          f"{len(step)} more ({step[0][0]} .. {step[-1][0]}) -> {step[0][1]}")
    if ppl <= budget and len(step) > 1:  # the last step met the budget: bisect for the fewest of it that do
        ppl, kl = _bisect(step, before, choices, budget, (ppl, kl), measure)
    if ppl > budget:
        raise CheckFailed(f"--max-ppl-increase {budget:.2%}: not met with the {min(max_promoted, len(names))} costliest "
                          f"MatMuls in float (perplexity {ppl:+.2%} on the calibration texts); raise --max-promoted or "
                          "the budget, or use --bits 8")
    result.ppl_change, result.kl_mean = ppl, kl
    return result


def _bisect(step, before: dict, choices: dict, budget: float, met: tuple[float, float], measure) -> tuple[float, float]:
    """The shortest prefix of ``step`` (costliest first) whose promotion meets ``budget``, the rest of
    it put back as they were: the grown steps otherwise overshoot (SmolLM2: +4.2% -> +1.7% for 37
    at once against a 3% budget). Leaves ``choices`` at that prefix; returns its (ppl, kl)."""
    lo, hi, best = 0, len(step), met  # step[:hi] meets the budget, step[:lo] does not

    def apply(k: int) -> None:
        for i, (n, choice) in enumerate(step):
            choices[n] = choice if i < k else before[n]

    while hi - lo > 1:
        mid = (lo + hi) // 2
        apply(mid)
        ppl, kl = measure(f"bisect: the first {mid} of the last {len(step)} -> {step[0][1]}")
        if ppl <= budget:
            hi, best = mid, (ppl, kl)
        else:
            lo = mid
    apply(hi)
    return best
