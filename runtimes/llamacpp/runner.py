"""llama.cpp (PyPI ``llama-cpp-python``) as a runner of the ``text-generation`` contract.

For a model imported from a GGUF file (``enginewright import-gguf``): the runner opens the file the
artifact's manifest records (its sha256 checked), so ``compare`` and the generation loop can put
llama.cpp's own kernels on that file beside PyTorch and ONNX Runtime, on the same token ids::

    enginewright compare runs/smol/hf runs/smol/hf --on llama.cpp --batch-size 1

llama.cpp keeps its KV cache inside, so the contract is met in two parts:

- ``infer`` takes prefills only (an empty past): each row's real tokens from an empty cache, the
  logits of every position returned (padded positions zero), ``present.*`` empty. Teacher-forced
  scoring (perplexity, top-1) needs nothing more.
- ``kv_step`` (the generation loop's fast path, which this runner prefers) carries the cache as an
  opaque handle: a prefill, then one token per call. Batch 1 only: one llama.cpp context holds one
  sequence.

Its numbers are llama.cpp's: on a quantized file, matrix products with 8-bit activations (Q8
blocks), so it is a peer to measure against, not a reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.base import Runner
from runtimes.errors import UsageError
from runtimes.specs import TensorSpec
from runtimes.tasks.generation import PAST_DIM, TOTAL_DIM, cache_shape, past_names

BATCH = 64  # tokens per llama_decode call
MISSING = ("runtime llama.cpp needs llama-cpp-python: pip install llama-cpp-python (it builds llama.cpp from "
           "source, a few minutes)")


def gguf_file(artifact) -> Path:
    """The GGUF file ``artifact`` was imported from, checked unchanged.

    Raises:
        UsageError: not imported from a GGUF, or the file is missing or changed.
    """
    from runtimes.artifact import imported_gguf

    record = (artifact.manifest or {}).get("source") or {}
    return imported_gguf(record, not_imported=f"{artifact.path}: runtime llama.cpp runs a GGUF file; this model was not "
                         "imported from one (enginewright import-gguf FILE -o DIR)",
                         changed=f"{artifact.path}: the GGUF file it was imported from ({record.get('path')}) is missing "
                         "or changed; import it again")


class LlamaCppRunner(Runner):
    """The GGUF file behind an imported model, on llama.cpp's CPU kernels."""

    backend = "llama.cpp"
    accepts = ("hf",)
    devices = ("cpu",)
    prefers_kv_step = True

    def __init__(self, artifact, *, device="cpu", threads=None, context: int = 512):
        super().__init__(artifact, device=device, threads=threads)
        if artifact.task != "text-generation":
            raise UsageError(f"{artifact.path}: runtime llama.cpp runs text-generation models; this one is {artifact.task!r}")
        if context < 2:
            raise UsageError(f"llama.cpp context {context}: give at least 2 positions")
        self.context = context
        self._model = None

    def activate_impl(self) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise UsageError(MISSING) from None
        from transformers import AutoConfig

        from runtimes import usable_cores

        self.gguf = gguf_file(self.artifact)
        config = AutoConfig.from_pretrained(str(self.artifact.path), local_files_only=True, trust_remote_code=False)
        layers, kv_heads, head_dim = cache_shape(config)
        self._cache = (kv_heads, head_dim)
        threads = self.threads or usable_cores()
        # logits_all: every position's logits (teacher-forced scoring). Its cost grows with n_batch: a
        # one-token decode of SmolLM2 took 152 ms at n_batch 512 and 27 ms at 64 (28 ms without
        # logits_all), so prefills go in chunks of 64 tokens
        self._model = Llama(model_path=str(self.gguf), n_ctx=self.context, n_batch=min(self.context, BATCH), n_threads=threads,
                            n_threads_batch=threads, logits_all=True, verbose=False)
        self._vocab = self._model.n_vocab()
        ids = [TensorSpec(n, "int64", ("batch_size", d)) for n, d in
               (("input_ids", "sequence_length"), ("attention_mask", TOTAL_DIM), ("position_ids", "sequence_length"))]
        self._inputs = ids + [TensorSpec(n, "float32", ("batch_size", kv_heads, PAST_DIM, head_dim))
                              for n in past_names(layers)]
        self._outputs = [TensorSpec("logits", "float32", ("batch_size", "sequence_length", self._vocab))] + [
            TensorSpec(n, "float32", ("batch_size", kv_heads, TOTAL_DIM, head_dim)) for n in past_names(layers, "present")]

    def deactivate_impl(self) -> None:
        if self._model is not None:
            self._model.close()
        self._model = None

    def input_specs_impl(self) -> list[TensorSpec]:
        return list(self._inputs)

    def output_specs_impl(self) -> list[TensorSpec]:
        return list(self._outputs)

    def _prefill(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Logits ``[seq, vocab]`` of one row from an empty cache; padded positions zero."""
        real = mask.astype(bool)  # a prefill: the mask covers the ids and nothing before them
        tokens = ids[real].tolist()
        if len(tokens) > self.context:
            raise UsageError(f"runtime llama.cpp: {len(tokens)} tokens exceed its context of {self.context} positions")
        out = np.zeros((ids.shape[0], self._vocab), np.float32)
        self._model.reset()
        if tokens:
            self._model.eval(tokens)
            out[real] = self._model.scores[:len(tokens)]
        return out

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        if mask.shape[1] != ids.shape[1]:
            raise UsageError("runtime llama.cpp: infer takes prefills only (an empty past); decode steps go through "
                             "its kv_step, which the generation loop uses")
        logits = np.stack([self._prefill(ids[i], mask[i]) for i in range(ids.shape[0])])
        empty = np.zeros((ids.shape[0], *self._cache[:1], 0, self._cache[1]), np.float32)
        return {"logits": logits, **{s.name: empty for s in self._outputs[1:]}}

    def kv_step(self, feeds, past):
        """One generation step of a batch of one: ``past`` None is a prefill (``feeds`` carries an empty
        cache), else the handle a previous step returned. Returns the logits and the next handle."""
        self._require_active()
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        if ids.shape[0] != 1:
            raise UsageError(f"runtime llama.cpp generates a batch of 1 (one sequence per context); got {ids.shape[0]} "
                             "rows: use --batch-size 1 / --batch 1")
        if past is None:
            logits = self._prefill(ids[0], mask[0])[None]
        else:
            if int(self._model.n_tokens) != past["n_tokens"]:
                raise RuntimeError("runtime llama.cpp: the cache moved on since this step's past (one sequence at a time)")
            if self._model.n_tokens + ids.shape[1] > self.context:
                raise UsageError(f"runtime llama.cpp: more than its context of {self.context} positions")
            start = self._model.n_tokens
            self._model.eval(ids[0].tolist())
            logits = np.array(self._model.scores[start:self._model.n_tokens])[None]
        return logits, {"n_tokens": int(self._model.n_tokens)}

    def describe(self) -> dict:
        import llama_cpp

        return {**super().describe(), "llama_cpp_python": llama_cpp.__version__, "n_ctx": self.context,
                "gguf": str(getattr(self, "gguf", "")), "threads": self.threads}
