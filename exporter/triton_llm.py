"""``triton`` for decoders (task ``text-generation``): the KV-cache graph as an ONNX Runtime backend
model, and beside it ``<name>_generate``, a Python-backend model (``triton_assets/generate_model.py``)
that runs the generation loop and calls the graph once per step through BLS.

The decoder model is unbatched (``max_batch_size: 0``, the batch axis in its dims): a generation's
cache belongs to it alone, so Triton's dynamic batcher must not merge two requests' steps. Each
``_generate`` request is one batch of prompts.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from runtimes.artifact import Artifact
from runtimes.errors import UsageError

TASK = "text-generation"
DEFAULT_MAX_NEW_TOKENS = 64
# (name, Triton type, dims, optional): one batch of prompts and the per-request settings
GENERATE_INPUTS = (("PROMPT", "TYPE_STRING", [-1], False), ("MAX_NEW_TOKENS", "TYPE_INT32", [1], True),
                   ("DO_SAMPLE", "TYPE_BOOL", [1], True), ("TEMPERATURE", "TYPE_FP32", [1], True),
                   ("TOP_K", "TYPE_INT32", [1], True), ("TOP_P", "TYPE_FP32", [1], True),
                   ("SEED", "TYPE_INT64", [1], True), ("CHAT", "TYPE_BOOL", [1], True))
GENERATE_OUTPUTS = (("TEXT", "TYPE_STRING", [-1]), ("TOKENS", "TYPE_INT64", [-1, -1]), ("LENGTHS", "TYPE_INT64", [-1]))


def is_decoder(art: Artifact) -> bool:
    return art.task == TASK


def check_decoder(art: Artifact, cfg) -> None:
    """Refuse what a decoder repository cannot be, in one line naming the option.

    Raises:
        UsageError: an engine, ``--ensemble``, ``--max-batch-size`` above 0, or CUDA graphs.
    """
    if art.kind != "onnx":
        what = "decoder engines are not served yet" if art.kind == "engine" else "run enginewright export on it first"
        raise UsageError(f"{art.path}: a Triton repository for a decoder takes its ONNX artifact (KV-cache graph), "
                         f"this is a {art.kind!r} artifact; {what}")
    if cfg.ensemble:
        raise UsageError(f"{art.path}: --ensemble is for encoders; a decoder gets its own <name>_generate model "
                         "(prompts in, text out)")
    if cfg.max_batch_size:  # None (not given) or 0
        raise UsageError(f"--max-batch-size {cfg.max_batch_size}: a decoder's model is unbatched (each generation has "
                         "its own KV cache); leave the option out or pass 0")


def decoder_configs(art: Artifact, name: str, cfg, model_config):
    """The decoder's ``ModelConfig`` (through ``model_config``, unbatched) and the generate model's."""
    from tritonclient.grpc import model_config_pb2 as mc

    decoder = model_config(art, name, replace(cfg, max_batch_size=0, dynamic_batching=False))
    gen = mc.ModelConfig(name=f"{name}_generate", backend="python", max_batch_size=0)
    for n, dtype, dims, optional in GENERATE_INPUTS:
        gen.input.add(name=n, data_type=getattr(mc.DataType, dtype), dims=dims, optional=optional)
    for n, dtype, dims in GENERATE_OUTPUTS:
        gen.output.add(name=n, data_type=getattr(mc.DataType, dtype), dims=dims)
    # the loop is host code; the decoder it calls runs where --device says
    gen.instance_group.add(count=cfg.instance_count, kind=mc.ModelInstanceGroup.Kind.KIND_CPU)
    return decoder, gen


def eos_token_ids(art: Artifact, tokenizer) -> list[int]:
    """EOS ids from the tokenizer, ``config.json`` and ``generation_config.json`` (an int or a list each)."""
    ids = {tokenizer.eos_token_id} if isinstance(tokenizer.eos_token_id, int) else set()
    for f in ("config.json", "generation_config.json"):
        try:
            value = json.loads((art.path / f).read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError, AttributeError):
            continue
        ids |= {v for v in (value if isinstance(value, list) else [value]) if isinstance(v, int) and not isinstance(v, bool)}
    return sorted(ids)


def generate_settings(art: Artifact, decoder_name: str, max_new_tokens: int) -> dict:
    """What ``generate_model.py`` reads from ``settings.json``.

    Raises:
        UsageError: past inputs without fixed head count and size, or no tokenizer.
    """
    from runtimes.tasks import get_task

    task = get_task(TASK)
    past = []
    for s in art.inputs:
        if s.name.startswith("past_key_values."):
            heads, head_dim = s.shape[1], s.shape[3]
            if not isinstance(heads, int) or not isinstance(head_dim, int):
                raise UsageError(f"{art.path}: input {s.name} has no fixed head count and size {s.shape}; re-export it")
            past.append({"name": s.name, "heads": heads, "head_dim": head_dim, "dtype": s.dtype})
    if not past:
        raise UsageError(f"{art.path}: the model has no past_key_values inputs; export it with --task text-generation")
    tokenizer = task.load_processor(art.path)
    limit = task.max_sequence(art.path)
    if limit is not None and max_new_tokens >= limit:
        raise UsageError(f"--max-new-tokens {max_new_tokens}: the model's context is {limit} positions")
    return {"decoder": decoder_name, "past": past, "takes_positions": any(s.name == "position_ids" for s in art.inputs),
            "eos_token_ids": eos_token_ids(art, tokenizer), "pad_token_id": tokenizer.pad_token_id,
            "max_positions": limit, "max_new_tokens": max_new_tokens,
            "max_prompt_tokens": (limit - 1) if limit else 4096}


def write_generate_model(art: Artifact, root: Path, gen_config, settings: dict, config_text) -> None:
    """``<name>_generate/config.pbtxt`` and ``1/`` with ``model.py``, ``settings.json`` and the tokenizer."""
    import shutil

    from exporter.writer import copy_companions

    version = root / gen_config.name / "1"
    (version / "tokenizer").mkdir(parents=True)
    shutil.copy2(Path(__file__).resolve().parent / "triton_assets" / "generate_model.py", version / "model.py")
    copy_companions(art.path, version / "tokenizer")
    (version / "settings.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
    (root / gen_config.name / "config.pbtxt").write_text(config_text(gen_config), encoding="utf-8")
