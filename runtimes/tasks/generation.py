"""Decoder-only language models (Llama, GPT-2, ...): left-padded tokenizer feeds and a KV cache.

Every runner of this task speaks one IO contract, the one optimum's ``text-generation-with-past``
export names: ``input_ids``, ``attention_mask``, ``position_ids`` and ``past_key_values.{i}.key`` /
``.value`` ``[batch_size, num_heads, past_sequence_length, head_dim]`` in; ``logits`` and
``present.{i}.key`` / ``.value`` out. A prefill is the same call with an empty past, so one graph
serves prefill and decode, and the generation loop (``runtimes/generation.py``) is written once for
every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from runtimes.errors import UsageError
from runtimes.specs import TensorSpec
from runtimes.tasks.base import BATCH_DIM, SEQ_DIM, Task
from runtimes.tasks.text import TOKENIZER_FILES

PAST_DIM = "past_sequence_length"
TOTAL_DIM = "past_sequence_length + sequence_length"
_IDS, _MASK, _POS = "input_ids", "attention_mask", "position_ids"


def past_names(num_layers: int, prefix: str = "past_key_values") -> list[str]:
    """``past_key_values.{i}.key``/``.value`` (or ``present.{i}...``) for every layer, key before value."""
    return [f"{prefix}.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def cache_shape(config) -> tuple[int, int, int]:
    """``(layers, kv heads, head dim)`` of a transformers config (Llama's or GPT-2's names)."""
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers, kv_heads, head_dim


def positions(mask: np.ndarray, past: int = 0) -> np.ndarray:
    """Position ids of a left-padded batch: counting real tokens only, padding at 1 (as transformers'
    ``generate`` does); for a decode step the last ``mask.shape[1] - past`` columns."""
    pos = np.cumsum(mask, axis=1, dtype=np.int64) - 1
    pos[mask == 0] = 1
    return np.ascontiguousarray(pos[:, past:])


@dataclass(frozen=True)
class GenerationTask(Task):
    """A causal language model: the tokenizer pads on the left, the mask is ``attention_mask``."""

    family: str = "decoder"
    modality: str = "text"
    model_inputs: tuple[str, ...] = (_IDS, _MASK, _POS)
    processor_files: tuple[str, ...] = TOKENIZER_FILES + ("generation_config.json", "chat_template.jinja")
    processor_name: str = "tokenizer"
    block_names: tuple[str, ...] = ("layers", "h")  # Llama-style ``model.layers``, GPT-2's ``transformer.h``

    def in_compress_scope(self, fqn: str) -> bool:
        """True for a module name inside the decoder blocks (``model.layers.3.mlp``, ``transformer.h.0.attn``)."""
        return any(f".{n}." in f".{fqn}." for n in self.block_names)

    def _blocks_owner(self, model):
        """The base model and the name of its block list, the first of ``block_names`` it has.

        Raises:
            UsageError: the model has none of them.
        """
        import torch

        owner = getattr(model, getattr(model, "base_model_prefix", ""), model)
        for name in self.block_names:
            if isinstance(getattr(owner, name, None), torch.nn.ModuleList):
                return owner, name
        raise UsageError(f"{type(model).__name__}: compression needs the decoder blocks at "
                         f"{' or '.join(repr(n) for n in self.block_names)} (task {self.name}); this model has none there")

    def has_processor(self, path: Path) -> bool:
        return any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))

    def input_specs(self, model) -> list[TensorSpec]:
        layers, kv_heads, head_dim = cache_shape(model.config)
        specs = [TensorSpec(n, "int64", (BATCH_DIM, SEQ_DIM)) for n in (_IDS, _POS)]
        specs.insert(1, TensorSpec(_MASK, "int64", (BATCH_DIM, TOTAL_DIM)))
        return specs + [TensorSpec(n, "float32", (BATCH_DIM, kv_heads, PAST_DIM, head_dim)) for n in past_names(layers)]

    def output_specs(self, config) -> list[TensorSpec]:
        layers, kv_heads, head_dim = cache_shape(config)
        return [TensorSpec("logits", "float32", (BATCH_DIM, SEQ_DIM, config.vocab_size))] + [
            TensorSpec(n, "float32", (BATCH_DIM, kv_heads, TOTAL_DIM, head_dim)) for n in past_names(layers, "present")]

    def torch_forward(self, model, tensors: Mapping) -> dict:
        """One call in this task's IO contract on a transformers causal LM: the past tensors become a
        ``DynamicCache``; returns ``logits`` and every ``present.*``."""
        from transformers import DynamicCache

        layers = cache_shape(model.config)[0]
        past = [tensors.get(n) for n in past_names(layers)]
        cache = DynamicCache()
        if all(p is not None for p in past) and past[0].shape[2] > 0:
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
        out = model(input_ids=tensors[_IDS], attention_mask=tensors[_MASK], position_ids=tensors.get(_POS),
                     past_key_values=cache, use_cache=True, return_dict=True)
        kv = out.past_key_values
        result = {"logits": out.logits}
        for i in range(layers):
            layer = kv.layers[i] if hasattr(kv, "layers") else None
            key, value = (layer.keys, layer.values) if layer is not None else kv[i]
            result[f"present.{i}.key"], result[f"present.{i}.value"] = key, value
        return result

    def load_processor(self, model_dir: str | Path):
        """The model's tokenizer, padding on the left; a tokenizer without a pad token pads with EOS."""
        if not self.has_processor(model_dir):  # transformers would guess a tokenizer class and fail inside it
            raise UsageError(f"{model_dir}: no tokenizer (tokenizer.json or tokenizer_config.json); copy the tokenizer "
                             "files into it (import-gguf writes them)")
        tok = self._pretrained("AutoTokenizer", model_dir, "copy the tokenizer files into it (import-gguf writes them)")
        tok.padding_side = "left"
        if tok.pad_token is None:
            if tok.eos_token is None:
                raise UsageError(f"{model_dir}: the tokenizer has neither a pad nor an EOS token; set pad_token in "
                                 "tokenizer_config.json")
            tok.pad_token = tok.eos_token
        return tok

    def encode(self, processor, batch, *, max_length: int = 128, pad_to_max: bool = False) -> dict[str, np.ndarray]:
        """Left-padded ``input_ids``/``attention_mask`` (truncated to ``max_length``) and their position ids."""
        enc = processor(list(batch.texts), padding="max_length" if pad_to_max else "longest", truncation=True,
                        max_length=max_length, return_tensors="np")
        feeds = {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in (_IDS, _MASK)}
        feeds[_POS] = positions(feeds[_MASK])
        return feeds

    def encode_batches(self, processor, data, batch_size: int, *, max_length: int = 128,
                       same_shape: bool = False) -> list[dict[str, np.ndarray]]:
        return [self.encode(processor, b, max_length=max_length, pad_to_max=same_shape)
                for b in data.batches(batch_size)]

    def feeds_for(self, encoded: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec], where: str) -> dict[str, np.ndarray]:
        """A prefill: every past input the model takes gets an empty cache ``[batch, heads, 0, head_dim]``;
        position ids are derived from the mask when the feed builder gave none."""
        encoded = dict(encoded)
        if _POS not in encoded and _MASK in encoded:
            encoded[_POS] = positions(encoded[_MASK])
        batch = encoded[_IDS].shape[0]
        for spec in inputs:
            if spec.name.startswith("past_key_values.") and spec.name not in encoded:
                heads, head_dim = spec.shape[1], spec.shape[3]
                if not isinstance(heads, int) or not isinstance(head_dim, int):
                    raise UsageError(f"{where}: input {spec.name} has no fixed head count and size {spec.shape}; "
                                     "re-export the model")
                encoded[spec.name] = np.zeros((batch, heads, 0, head_dim), dtype=spec.dtype)
        return super().feeds_for(encoded, inputs, where)

    def mask(self, feeds):
        return feeds.get(_MASK)

    def token_counts(self, feeds) -> tuple[int, int]:
        ids = feeds[_IDS]
        return ids.size, int(feeds[_MASK].sum()) if _MASK in feeds else ids.size

    def varies_with_seq(self, processor) -> bool:
        return True

    def max_sequence(self, model_dir: Path) -> int | None:
        """``max_position_embeddings`` (Llama) or ``n_positions`` (GPT-2) of ``config.json``."""
        import json

        try:
            config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        value = config.get("max_position_embeddings", config.get("n_positions")) if isinstance(config, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def feeds_note(self, max_length: int) -> str:
        return f"max length {max_length}, left-padded to the longest in each batch; padded positions excluded"

    def profile_dims(self, model_dir, batches, seqs) -> dict[str, tuple]:
        """One profile covering prefill and decode: batch and sequence as asked (within the model's
        positions), the past from empty to the longest context (``profile_phases`` splits them)."""
        seqs, past = self._seq_and_past(model_dir, seqs)
        return {BATCH_DIM: tuple(batches), SEQ_DIM: seqs, PAST_DIM: (0, *past[1:])}

    def profile_phases(self, model_dir, batches, seqs, dims=None) -> dict[str, dict[str, tuple]]:
        """Two profiles, one per phase of generation (TensorRT tunes kernels at each profile's opt
        shape, and a prefill's GEMMs have batch x prompt rows where a decode step's have batch rows):

        - ``prefill``: an empty past (0), the prompt 1..max tokens;
        - ``decode``: one new token, a past of 1 up to the longest context (by default twice the
          longest prompt, less one, within the model's positions).

        ``attention_mask``'s ``past_sequence_length + sequence_length`` follows from the two. ``dims``
        replaces ``batch_size`` (both phases), ``sequence_length`` (prefill) or
        ``past_sequence_length`` (decode); a call with a non-empty past and more than one token fits
        neither profile (a runner refuses it in one line).
        """
        dims = dict(dims or {})
        seq_default, past_default = self._seq_and_past(model_dir, seqs)
        batch = tuple(dims.pop(BATCH_DIM, tuple(batches)))
        seq = tuple(dims.pop(SEQ_DIM, seq_default))
        past = tuple(dims.pop(PAST_DIM, past_default))
        return {"prefill": {**dims, BATCH_DIM: batch, SEQ_DIM: seq, PAST_DIM: (0, 0, 0)},
                "decode": {**dims, BATCH_DIM: batch, SEQ_DIM: (1, 1, 1), PAST_DIM: past}}

    def _seq_and_past(self, model_dir, seqs) -> tuple[tuple, tuple]:
        """The prompt range (capped at the model's positions) and the decode past range."""
        limit = self.max_sequence(model_dir) if model_dir is not None else None
        seq = tuple(min(s, limit) for s in seqs) if limit else tuple(seqs)
        longest = min(2 * seq[2], limit) if limit else 2 * seq[2]
        return seq, (1, min(seq[1], longest - 1), longest - 1)

TEXT_GENERATION = GenerationTask("text-generation", auto_class="AutoModelForCausalLM",
                                 optimum_task="text-generation-with-past", arch_suffixes=("ForCausalLM", "LMHeadModel"),
                                 trainable=True)
