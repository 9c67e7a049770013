"""Text encoders (BERT-style): tokenizer feeds, padding-aware parity, batch x sequence profiles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from runtimes.specs import TensorSpec
from runtimes.tasks.base import BATCH_DIM, SEQ_DIM, Task

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "merges.txt",
                   "vocab.json", "sentencepiece.bpe.model", "added_tokens.json")
_MASK, _IDS, _SEGMENTS = TEXT_INPUTS[1], TEXT_INPUTS[0], TEXT_INPUTS[2]


@dataclass(frozen=True)
class TextTask(Task):
    """A text encoder with one head; ``head`` is ``hidden`` (token states), ``sequence`` (one row of
    logits per text) or ``token`` (one row of logits per token)."""

    family: str = "text-encoder"
    modality: str = "text"
    model_inputs: tuple[str, ...] = TEXT_INPUTS
    layer_pattern: str | None = "encoder.layer"
    processor_files: tuple[str, ...] = TOKENIZER_FILES
    processor_name: str = "tokenizer"
    head: str = "hidden"

    def has_processor(self, path: Path) -> bool:
        return any((Path(path) / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"))

    def input_specs(self, model) -> list[TensorSpec]:
        return [TensorSpec(n, "int64", (BATCH_DIM, SEQ_DIM)) for n in self.model_input_names(model)]

    def output_specs(self, config) -> list[TensorSpec]:
        if self.head == "hidden":
            return [TensorSpec("last_hidden_state", "float32", (BATCH_DIM, SEQ_DIM, config.hidden_size))]
        if self.head == "sequence":
            return [TensorSpec("logits", "float32", (BATCH_DIM, config.num_labels))]
        return [TensorSpec("logits", "float32", (BATCH_DIM, SEQ_DIM, config.num_labels))]

    def load_processor(self, model_dir: str | Path):
        return self._pretrained("AutoTokenizer", model_dir, "copy the tokenizer files into it")

    def encode(self, processor, batch, *, max_length: int = 128, pad_to_max: bool = False) -> dict[str, np.ndarray]:
        """Tokenize to int64 arrays: padded to the longest row, or to ``max_length`` when
        ``pad_to_max``; always truncated to ``max_length``."""
        enc = processor(
            list(batch.texts),
            list(batch.pairs) if batch.pairs is not None else None,
            padding="max_length" if pad_to_max else "longest",
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        return {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in enc.items()}

    def encode_batches(self, processor, data, batch_size: int, *, max_length: int = 128,
                       same_shape: bool = False) -> list[dict[str, np.ndarray]]:
        length = max_length
        if same_shape:  # one length for all batches: the longest row, capped
            ids = processor(list(data.texts), truncation=True, max_length=max_length)[_IDS]
            length = min(max_length, max(len(x) for x in ids))
        return [self.encode(processor, b, max_length=length, pad_to_max=same_shape) for b in data.batches(batch_size)]

    def feeds_for(self, encoded: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec], where: str) -> dict[str, np.ndarray]:
        """Inputs the model lacks are dropped (a model exported without segment ids just works);
        segment ids a model wants but the tokenizer did not give are zeros."""
        if _SEGMENTS not in encoded and any(s.name == _SEGMENTS for s in inputs):
            encoded = {**encoded, _SEGMENTS: np.zeros(encoded[_IDS].shape, dtype=np.int64)}
        return super().feeds_for(encoded, inputs, where)

    def mask(self, feeds):
        return feeds.get(_MASK)

    def token_counts(self, feeds) -> tuple[int, int]:
        ids = next(iter(feeds.values()))
        return ids.size, int(feeds[_MASK].sum()) if _MASK in feeds else ids.size

    def varies_with_seq(self, processor) -> bool:
        return True

    def max_sequence(self, model_dir: Path) -> int | None:
        """``max_position_embeddings`` of ``config.json`` (a longer sequence indexes past the position
        table and crashes inside the runtime)."""
        import json

        try:
            value = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def feeds_note(self, max_length: int) -> str:
        return f"max length {max_length}, padded to the longest in each batch; padded positions excluded from every metric"

    def profile_dims(self, model_dir, batches, seqs) -> dict[str, tuple]:
        return {BATCH_DIM: tuple(batches), SEQ_DIM: tuple(seqs)}


FEATURE_EXTRACTION = TextTask("feature-extraction", auto_class="AutoModel", optimum_task="feature-extraction",
                              arch_suffixes=("Model",), head="hidden")
TEXT_CLASSIFICATION = TextTask("text-classification", auto_class="AutoModelForSequenceClassification",
                               optimum_task="text-classification", arch_suffixes=("ForSequenceClassification",),
                               head="sequence", scores_labels=True, trainable=True)
TOKEN_CLASSIFICATION = TextTask("token-classification", auto_class="AutoModelForTokenClassification",
                                optimum_task="token-classification", arch_suffixes=("ForTokenClassification",),
                                head="token", trainable=True)
