"""The one interface every backend implements.

Runners follow a non-virtual interface: the public methods validate and keep state, then call the
``*_impl`` hooks a backend overrides. Runners are context managers::

    with open_runner(artifact, "onnxruntime:cpu", threads=2) as runner:
        outputs = runner.infer({"input_ids": ids, "attention_mask": mask})
"""

from __future__ import annotations

import abc
from typing import Mapping

import numpy as np

from runtimes.artifact import Artifact
from runtimes.errors import UsageError
from runtimes.specs import TensorSpec, validate_feeds


class Runner(abc.ABC):
    """Runs one artifact on one backend and device.

    Subclasses set ``backend`` and ``accepts`` (the artifact kinds they can run) and implement
    ``activate_impl``, ``deactivate_impl``, ``infer_impl`` and the spec hooks.
    """

    backend: str = ""
    accepts: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu",)

    def __init__(self, artifact: Artifact, *, device: str = "cpu", threads: int | None = None):
        if artifact.kind not in self.accepts:
            raise UsageError(
                f"{artifact.path}: a {artifact.kind!r} artifact cannot run on {self.backend}; "
                f"{self.backend} runs {list(self.accepts)} artifacts"
            )
        if device not in self.devices:
            raise UsageError(f"runtime {self.backend}:{device}: unknown device; choose one of {list(self.devices)}")
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be at least 1, got {threads}")
        self.artifact = artifact
        self.device = device
        self.threads = threads
        self.is_active = False

    @property
    def runtime(self) -> str:
        """``backend:device``, e.g. ``onnxruntime:cpu``."""
        return f"{self.backend}:{self.device}"

    @property
    def label(self) -> str:
        return f"{self.artifact.name} @ {self.runtime}"

    # -- lifecycle --------------------------------------------------------------------------
    def activate(self) -> "Runner":
        if self.is_active:
            raise RuntimeError(f"{self.label}: already active")
        self.activate_impl()
        self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    # -- interface --------------------------------------------------------------------------
    def input_specs(self) -> list[TensorSpec]:
        self._require_active()
        return self.input_specs_impl()

    def output_specs(self) -> list[TensorSpec]:
        self._require_active()
        return self.output_specs_impl()

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Feeds must match ``input_specs()`` by name, dtype and rank.

        Raises:
            UsageError: wrong input names, dtypes or ranks (the message names the expected spec).
        """
        self._require_active()
        validate_feeds(feeds, self.input_specs_impl(), where=self.label)
        return self.infer_impl(dict(feeds))

    def describe(self) -> dict:
        """Settings that matter for a fair comparison (threads, providers, attention kernel...)."""
        return {"backend": self.backend, "device": self.device, "threads": self.threads}

    def _require_active(self) -> None:
        if not self.is_active:
            raise RuntimeError(f"{self.label}: call activate() or use the runner as a context manager first")

    # -- hooks ------------------------------------------------------------------------------
    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def deactivate_impl(self) -> None: ...

    @abc.abstractmethod
    def input_specs_impl(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def output_specs_impl(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
