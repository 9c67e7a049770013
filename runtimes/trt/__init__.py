"""TensorRT backend: run a serialized engine (``model.plan``) built by ``enginewright build``.

Importing this package imports neither tensorrt nor torch; ``require_tensorrt`` and the runner load
them when they run, so the CPU install never needs TensorRT.
"""

from runtimes.trt.engine import (
    check_engine_compat, engine_manifest, require_cuda, require_tensorrt, select_profile, trt_major,
)

__all__ = ["check_engine_compat", "engine_manifest", "require_cuda", "require_tensorrt", "select_profile", "trt_major"]
