"""Export of an embedding model with pooling (and L2 normalisation) inside the graph."""

from __future__ import annotations

import inspect
from pathlib import Path

from benchmarks.data import load_texts, load_tokenizer, tokenize
from benchmarks.parity import Tolerance
from exporter.manifest import COMPANION_FILES
from runtimes.artifact import Artifact
from runtimes.pyt.loading import as_usage_error, hf_load_errors
from runtimes.pyt.runner import pool


def export_pooled(src: Artifact, out: Path, *, pooling: str, normalize: bool, opset: int | None, external_data: bool,
                  force: bool, tolerance: Tolerance, command: str | None) -> Artifact:
    """``sentence_embedding [batch_size, hidden]`` = pooled (``mean`` over real tokens, or ``cls``)
    and optionally L2-normalised ``last_hidden_state``, checked against the same pooling in PyTorch."""
    import torch
    import transformers

    from exporter.module import export_module

    try:
        model = transformers.AutoModel.from_pretrained(str(src.path), local_files_only=True, trust_remote_code=False,
                                                       attn_implementation="eager").eval()
    except hf_load_errors() as e:
        raise as_usage_error(src.path, e) from None
    params = inspect.signature(model.forward).parameters
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in params]
    enc = tokenize(load_tokenizer(src.path), load_texts(None).take(4), max_length=32)
    example = {n: torch.from_numpy(enc[n]) if n in enc else torch.zeros_like(torch.from_numpy(enc["input_ids"])) for n in names}

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask=None, token_type_ids=None):
            kw = {k: v for k, v in {"attention_mask": attention_mask, "token_type_ids": token_type_ids}.items() if k in names}
            hidden = self.model(input_ids=input_ids, **kw).last_hidden_state
            return pool(hidden, attention_mask, pooling, normalize)

    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in names}
    axes["sentence_embedding"] = {0: "batch_size"}
    return export_module(
        Pooled(), example, out, output_names=["sentence_embedding"], dynamic_axes=axes, opset=max(opset or 17, 14),
        external_data=external_data, dynamo=False, force=force, tolerance=tolerance, task="feature-extraction",
        command=command, source=src, extra_files=[src.path / f for f in COMPANION_FILES if (src.path / f).is_file()],
        extra_manifest={"pooling": {"mode": pooling, "normalize": normalize}},
    )
