"""Which runners a command builds from its artifacts and ``--on`` runtimes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from runtimes import Artifact, backend_class, default_runtime, load_artifact, open_runner, parse_runtime
from runtimes.base import Runner
from runtimes.errors import UsageError
from runtimes.tasks import Task, get_task


@dataclass(frozen=True)
class RunnerPlan:
    artifact: Artifact
    runtime: str

    @property
    def label(self) -> str:
        return f"{self.artifact.name} @ {self.runtime}"

    def open(self, threads: int | None = None, provider_options: Mapping[str, Mapping] | None = None,
             torch_options: Mapping | None = None, trust_engine_code: bool = False) -> Runner:
        """Open the runner; ``provider_options`` maps an onnxruntime device (``cuda``) to its options,
        ``torch_options`` go to a torch runner (e.g. the pooling an embedding export carries),
        ``trust_engine_code`` to a TensorRT runner (host code in version-compatible or plugin engines)."""
        backend, device = parse_runtime(self.runtime)
        options = {}
        if backend == "onnxruntime" and provider_options and device in provider_options:
            options["provider_options"] = dict(provider_options[device])
        if backend == "torch" and torch_options:
            options.update(torch_options)
        if backend == "tensorrt":
            options["trust_engine_code"] = bool(trust_engine_code)
        return open_runner(self.artifact, self.runtime, threads=threads, **options)


def plan_runners(artifacts: Sequence[str | Artifact], runtimes: Sequence[str] | None = None,
                 task: str | None = None) -> list[RunnerPlan]:
    """Each artifact on each given runtime that can run its kind (default: its own runtime).

    Raises:
        UsageError: an unknown runtime, or an artifact none of the runtimes can run.
    """
    arts = [a if isinstance(a, Artifact) else load_artifact(a, task=task) for a in artifacts]
    for rt in runtimes or ():
        parse_runtime(rt)
    plans = []
    for art in arts:
        chosen = [rt for rt in (runtimes or ()) if art.kind in backend_class(parse_runtime(rt)[0]).accepts]
        if runtimes and not chosen:
            takes = {"hf": "torch", "onnx": "onnxruntime[:cpu|:cuda|:tensorrt]", "trt": "tensorrt"}.get(art.kind, "?")
            hint = "; tensorrt runs engines: make one with enginewright build" if art.kind == "onnx" and any(
                parse_runtime(rt)[0] == "tensorrt" for rt in runtimes) else ""
            raise UsageError(f"{art.path}: none of the runtimes {list(runtimes)} runs a {art.kind!r} artifact (that takes "
                             f"--on {takes}){hint}")
        for rt in chosen or [default_runtime(art)]:
            plans.append(RunnerPlan(art, ":".join(parse_runtime(rt))))
    labels = [p.label for p in plans]
    dupes = {x for x in labels if labels.count(x) > 1}
    if dupes:
        raise UsageError(f"the same artifact and runtime is listed twice: {sorted(dupes)}")
    return plans


def check_sequence_length(artifacts: Sequence[Artifact], task: Task | str | None, length: int, option: str,
                          reserved: int = 0) -> None:
    """Refuse a sequence length beyond what any of the models takes, before anything runs; ``length``
    is the option's value plus ``reserved`` positions the run needs besides (a prompt's token).

    Raises:
        UsageError: one line naming the option, the model, its limit and the value that fits.
    """
    task = get_task(task)
    for a in artifacts:
        limit = task.max_sequence(a.path)
        if limit is not None and length > limit:
            besides = f", {reserved} of them for the prompt" if reserved else ""
            raise UsageError(f"{option} {length - reserved}: {a.path} takes at most {limit} positions (max_position_embeddings "
                             f"in its config.json{besides}); pass {option} {limit - reserved} or less")


def processor_source(artifacts: Sequence[Artifact], task: Task | str | None = None) -> Artifact:
    """The first artifact that carries what the task's feed builder reads (tokenizer files for a
    text encoder, ``preprocessor_config.json`` for an image model).

    Raises:
        UsageError: none does.
    """
    task = get_task(task)
    for a in artifacts:
        if task.has_processor(a.path):
            return a
    raise UsageError(
        f"none of {[str(a.path) for a in artifacts]} holds {task.processor_name} files "
        f"({', '.join(task.processor_files) or 'manifest.json'}); copy them into one of them"
    )
