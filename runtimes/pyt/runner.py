"""Run a Hugging Face model directory with PyTorch (CPU, or CUDA where present)."""

from __future__ import annotations

import inspect

import numpy as np

from runtimes.base import Runner
from runtimes.errors import UsageError
from runtimes.pyt.loading import as_usage_error, hf_load_errors
from runtimes.specs import TensorSpec

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_AUTO_CLASS = {
    "feature-extraction": "AutoModel",
    "text-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
}


def text_input_names(model) -> list[str]:
    """The tokenizer inputs a transformers model's ``forward`` takes, in its order."""
    return [n for n in inspect.signature(model.forward).parameters if n in TEXT_INPUTS]


def hf_output_specs(task: str, config) -> list[TensorSpec]:
    """Output specs named as transformers' model classes name them."""
    if task == "feature-extraction":
        return [TensorSpec("last_hidden_state", "float32", ("batch_size", "sequence_length", config.hidden_size))]
    if task == "text-classification":
        return [TensorSpec("logits", "float32", ("batch_size", config.num_labels))]
    if task == "token-classification":
        return [TensorSpec("logits", "float32", ("batch_size", "sequence_length", config.num_labels))]
    raise UsageError(f"unknown task {task!r}; choose one of {sorted(_AUTO_CLASS)}")


def pool(hidden, mask, mode: str, normalize: bool):
    """Sentence embeddings from token states: masked mean (sentence-transformers' mean pooling) or
    the first ([CLS]) token, optionally L2-normalised. Shared by the runner and the pooled export."""
    import torch

    if mode == "cls":
        emb = hidden[:, 0]
    else:
        m = (mask if mask is not None else torch.ones(hidden.shape[:2], device=hidden.device)).unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb, p=2, dim=-1) if normalize else emb


class TorchRunner(Runner):
    """Eager PyTorch in inference mode, pinned to be a fair baseline.

    Fair means: ``torch.inference_mode()``, the same thread count as the other runtimes, the
    fastest attention implementation the model supports (SDPA, falling back to eager), and
    FP32 weights.
    """

    backend = "torch"
    accepts = ("hf",)
    devices = ("cpu", "cuda")

    def __init__(self, artifact, *, device="cpu", threads=None, attn_implementation: str = "sdpa",
                 pooling: str | None = None, normalize: bool = False):
        super().__init__(artifact, device=device, threads=threads)
        if pooling not in (None, "mean", "cls"):
            raise UsageError(f"pooling {pooling!r}: choose mean or cls")
        if pooling and artifact.task != "feature-extraction":
            raise UsageError(f"{artifact.path}: pooling applies to feature-extraction models, this one is {artifact.task!r}")
        self.pooling, self.normalize = pooling, normalize
        if artifact.task is None:
            raise UsageError(
                f"{artifact.path}: cannot tell the task from config.json 'architectures'; pass --task "
                f"({', '.join(_AUTO_CLASS)})"
            )
        if artifact.task not in _AUTO_CLASS:
            raise UsageError(f"{artifact.path}: unknown task {artifact.task!r}; choose one of {sorted(_AUTO_CLASS)}")
        self.attn_implementation = attn_implementation
        self._model = None

    def activate_impl(self) -> None:
        import torch
        import transformers

        if self.device == "cuda" and not torch.cuda.is_available():
            raise UsageError(
                "runtime torch:cuda: torch.cuda.is_available() is False (no GPU or a CPU build of torch); use torch:cpu"
            )
        if self.threads:
            torch.set_num_threads(self.threads)
        auto = getattr(transformers, _AUTO_CLASS[self.artifact.task])
        kwargs = dict(local_files_only=True, trust_remote_code=False, dtype=torch.float32)
        try:
            try:
                model = auto.from_pretrained(str(self.artifact.path), attn_implementation=self.attn_implementation, **kwargs)
            except ValueError as e:
                if self.attn_implementation not in str(e):
                    raise
                self.attn_implementation = "eager"  # the model has no such kernel
                model = auto.from_pretrained(str(self.artifact.path), attn_implementation="eager", **kwargs)
        except hf_load_errors() as e:
            raise as_usage_error(self.artifact.path, e) from None
        self._model = model.eval().to(self.device)
        self._config = model.config
        self._inputs = [TensorSpec(n, "int64", ("batch_size", "sequence_length")) for n in text_input_names(model)]
        self._outputs = hf_output_specs(self.artifact.task, model.config)
        if self.pooling:
            self._outputs = [TensorSpec("sentence_embedding", "float32", ("batch_size", model.config.hidden_size))]

    def deactivate_impl(self) -> None:
        self._model = None
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def input_specs_impl(self) -> list[TensorSpec]:
        return list(self._inputs)

    def output_specs_impl(self) -> list[TensorSpec]:
        return list(self._outputs)

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in feeds.items()}
            out = self._model(**tensors, return_dict=True)
            if self.pooling:
                emb = pool(out["last_hidden_state"], tensors.get("attention_mask"), self.pooling, self.normalize)
                return {"sentence_embedding": emb.detach().float().cpu().numpy()}
            return {s.name: out[s.name].detach().float().cpu().numpy() for s in self._outputs}

    def describe(self) -> dict:
        import torch

        return {
            **super().describe(),
            "threads": torch.get_num_threads() if self.device == "cpu" else self.threads,
            "attn_implementation": self.attn_implementation,
            **({"pooling": self.pooling, "normalize": self.normalize} if self.pooling else {}),
            "mode": "eager, torch.inference_mode, fp32",
            "torch": torch.__version__,
        }
