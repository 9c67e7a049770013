"""Run a Hugging Face model directory with PyTorch (CPU, or CUDA where present)."""

from __future__ import annotations

import numpy as np

from runtimes.base import Runner
from runtimes.errors import UsageError
from runtimes.pyt.loading import as_usage_error, hf_load_errors
from runtimes.specs import TensorSpec
from runtimes.tasks import get_task, task_names


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
        hf_tasks = [t for t in task_names() if get_task(t).auto_class]
        if artifact.task is None:
            raise UsageError(
                f"{artifact.path}: cannot tell the task from config.json 'architectures'; pass --task "
                f"({', '.join(hf_tasks)})"
            )
        if artifact.task not in hf_tasks:
            raise UsageError(f"{artifact.path}: unknown task {artifact.task!r}; choose one of {sorted(hf_tasks)}")
        self.task = get_task(artifact.task)
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
        auto = getattr(transformers, self.task.auto_class)
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
        self._inputs = self.task.input_specs(model)
        self._outputs = self.task.output_specs(model.config)
        if self.pooling:
            self._outputs = [TensorSpec("sentence_embedding", "float32", ("batch_size", model.config.hidden_size))]

    @property
    def model(self):
        """The loaded transformers model (for code that needs the model itself, such as ``model.generate()``)."""
        self._require_active()
        return self._model

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
            out = self.task.torch_forward(self._model, tensors)
            if self.pooling:
                emb = pool(out["last_hidden_state"], self.task.mask(tensors), self.pooling, self.normalize)
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
