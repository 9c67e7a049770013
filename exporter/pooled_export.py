"""Export of an embedding model with pooling (and L2 normalisation) inside the graph."""

from __future__ import annotations

from pathlib import Path

from evaluation.parity import Tolerance
from exporter.module import export_hf_head, load_eager
from runtimes.artifact import Artifact
from runtimes.pyt.runner import pool


def export_pooled(src: Artifact, out: Path, *, pooling: str, normalize: bool, opset: int | None, external_data: bool,
                  force: bool, tolerance: Tolerance, command: str | None) -> Artifact:
    """``sentence_embedding [batch_size, hidden]`` = pooled (``mean`` over real tokens, or ``cls``)
    and optionally L2-normalised ``last_hidden_state``, checked against the same pooling in PyTorch."""
    import transformers

    model = load_eager(src, transformers.AutoModel)
    return export_hf_head(
        src, model, lambda out, mask: pool(out.last_hidden_state, mask, pooling, normalize), out,
        output_name="sentence_embedding", output_axes={0: "batch_size"}, opset=opset, external_data=external_data,
        force=force, tolerance=tolerance, task="feature-extraction", command=command,
        extra_manifest={"pooling": {"mode": pooling, "normalize": normalize}},
    )
