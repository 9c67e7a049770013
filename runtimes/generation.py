"""Text generation over any runner of the ``text-generation`` IO contract (``runtimes/tasks/generation.py``).

The loop is written once, in numpy, and steps a ``Runner`` (PyTorch, ONNX Runtime, later TensorRT)
through ``infer``: a prefill with an empty cache, then one token per step with the ``present.*``
outputs fed back as ``past_key_values.*`` (or through the runner's ``kv_step`` when it has one: ONNX
Runtime's IO binding keeps the cache in ``OrtValue``s). So greedy decoding, sampling, left padding and EOS mean
the same on every backend, and a difference between two runners' tokens comes from their numbers,
never from two loops::

    with open_runner(artifact, "onnxruntime:cpu") as runner:
        out = generate(runner, task.encode(tokenizer, batch), GenerationConfig(max_new_tokens=16))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from runtimes.base import Runner
from runtimes.errors import UsageError
from runtimes.tasks.generation import positions

_PAST, _PRESENT = "past_key_values.", "present."


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick tokens. Greedy unless ``do_sample``; sampling draws from the softmax of
    ``logits / temperature`` restricted to the ``top_k`` best (0: all) and the smallest set whose
    probability reaches ``top_p``, from a generator seeded with ``seed``. A row stops at the first of
    ``eos_token_ids`` (and is padded with ``pad_token_id`` after it); the loop stops when every row has."""

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens {self.max_new_tokens}: generate at least 1 token")
        if self.temperature <= 0:
            raise UsageError(f"--temperature {self.temperature}: must be above 0")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise UsageError(f"top_k {self.top_k} / top_p {self.top_p}: top_k must be >= 0 and top_p in (0, 1]")


@dataclass
class Generation:
    """What one batch generated: ``tokens`` ``[batch, steps]`` (pad after a row's EOS), ``lengths``
    (new tokens per row, EOS included), the time to the first token (prefill and its pick) and of
    every later step, in seconds."""

    tokens: np.ndarray
    lengths: np.ndarray
    first_token_s: float
    step_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0


class Decoder:
    """A runner stepped with its KV cache: ``forward(ids, mask, past)`` -> ``(logits, past)``.

    A runner with a ``kv_step`` fast path (ONNX Runtime's IO binding) keeps the cache in its own
    memory: ``past`` is then whatever ``kv_step`` returned, opaque to the loop. ``io_binding``: True
    uses ``kv_step`` when the runner has one, False never, None when the runner prefers it
    (``prefers_kv_step``: ONNX Runtime on a GPU, where the cache would cross to the host every step;
    on the CPU, ``run`` with numpy feeds copies nothing and the binding calls cost more)."""

    def __init__(self, runner: Runner, *, io_binding: bool | None = None):
        specs = runner.input_specs()
        self.runner = runner
        use = getattr(runner, "prefers_kv_step", False) if io_binding is None else io_binding
        self.kv_step = getattr(runner, "kv_step", None) if use else None
        self.past_specs = [s for s in specs if s.name.startswith(_PAST)]
        self.takes_positions = any(s.name == "position_ids" for s in specs)
        if not self.past_specs:
            raise UsageError(f"{runner.label}: the model has no past_key_values inputs; export it with "
                             "--task text-generation (a KV cache is needed to generate)")

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        return {s.name: np.zeros((batch, s.shape[1], 0, s.shape[3]), dtype=s.dtype) for s in self.past_specs}

    def forward(self, ids: np.ndarray, mask: np.ndarray, past: Mapping[str, np.ndarray] | None = None):
        """Logits ``[batch, len(ids), vocab]`` of ``ids`` after ``past`` (None: a prefill); ``mask`` covers
        past and new positions. Returns the logits and the cache to pass next."""
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self.takes_positions:
            feeds["position_ids"] = positions(mask, mask.shape[1] - ids.shape[1])
        if self.kv_step is not None:
            return self.kv_step(feeds if past is not None else {**feeds, **self.empty_past(ids.shape[0])}, past)
        feeds.update(past if past is not None else self.empty_past(ids.shape[0]))
        out = self.runner.infer(feeds)
        return out["logits"], {_PAST + k[len(_PRESENT):]: v for k, v in out.items() if k.startswith(_PRESENT)}


def pick(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> np.ndarray:
    """The next token of every row from its last-position ``logits`` ``[batch, vocab]``."""
    if not config.do_sample:
        return logits.argmax(-1).astype(np.int64)
    z = logits.astype(np.float64) / config.temperature
    if config.top_k:
        kth = np.sort(z, axis=-1)[:, -min(config.top_k, z.shape[-1])][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if config.top_p < 1:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, -1)
        drop = np.cumsum(sorted_p, -1) - sorted_p >= config.top_p  # keep up to and including the crossing token
        np.put_along_axis(p, order, np.where(drop, 0.0, sorted_p), -1)
        p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p], dtype=np.int64)


def generate(runner: Runner, encoded: Mapping[str, np.ndarray], config: GenerationConfig = GenerationConfig(), *,
             max_positions: int | None = None, io_binding: bool | None = None) -> Generation:
    """Generate up to ``config.max_new_tokens`` after each left-padded prompt of ``encoded``
    (``input_ids``, ``attention_mask``); ``io_binding``: the runner's ``kv_step`` fast path, see ``Decoder``.

    Raises:
        UsageError: prompt plus new tokens exceed ``max_positions`` (the model's context), or the
            runner has no KV cache inputs.
    """
    ids = np.ascontiguousarray(encoded["input_ids"], dtype=np.int64)
    mask = np.ascontiguousarray(encoded.get("attention_mask", np.ones_like(ids)), dtype=np.int64)
    if max_positions is not None and ids.shape[1] + config.max_new_tokens > max_positions:
        raise UsageError(f"a prompt of {ids.shape[1]} tokens plus --max-new-tokens {config.max_new_tokens} needs a KV "
                         f"cache of {ids.shape[1] + config.max_new_tokens} positions; the model takes {max_positions}: "
                         f"pass --max-new-tokens {max(max_positions - ids.shape[1], 1)} or less, or shorter prompts")
    prompt_tokens = int(mask.sum())
    decoder, rng = Decoder(runner, io_binding=io_binding), np.random.default_rng(config.seed)
    batch = ids.shape[0]
    eos = np.array(config.eos_token_ids or (-1,), dtype=np.int64)
    done, lengths, tokens, steps = np.zeros(batch, bool), np.zeros(batch, np.int64), [], []
    start = time.perf_counter()
    logits, past = decoder.forward(ids, mask)
    first = None
    for step in range(config.max_new_tokens):
        nxt = pick(logits[:, -1], config, rng)
        nxt = np.where(done, config.pad_token_id, nxt)
        tokens.append(nxt)
        lengths += ~done
        done |= np.isin(nxt, eos)
        now = time.perf_counter()
        if first is None:
            first = now - start
        else:
            steps.append(now - start)
        if done.all() or step == config.max_new_tokens - 1:
            break
        start = time.perf_counter()
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
        logits, past = decoder.forward(nxt[:, None], mask, past)
    return Generation(np.stack(tokens, 1), lengths, first, steps, prompt_tokens)
