"""``build_engine``: an ONNX artifact -> a TensorRT engine artifact (``model.plan`` + manifest).

Precision follows the graph: FP16 weights or Q/DQ nodes build a strongly typed network, which
keeps the graph's types (TensorRT 11 knows no other kind). An FP32 graph builds FP32, strongly
typed; on TensorRT 10 only, ``fp16_flag`` lets the builder pick FP16 kernels in a weakly typed
network instead. On a Q/DQ graph it does the same for the layers outside Q/DQ (with the INT8
flag, which a weakly typed Q/DQ network needs): strongly typed, those run in FP32 as the graph
types them, which can leave an INT8 engine slower than an FP16 one.

Profiles are derived and validated before TensorRT is imported, so a bad ``--shapes`` is reported
the same way on a machine without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from exporter.writer import ArtifactWriter, open_input
from runtimes.artifact import Artifact, model_files_sha256, source_record
from runtimes.manifests import EngineManifest
from runtimes.onnx_graph import graph_precision
from runtimes.errors import UsageError
from runtimes.specs import TensorSpec, check_profile, specs_to_list
from runtimes.tasks import get_task
from runtimes.trt.engine import (
    AMPERE, MODEL_FILE, cc_tuple, engine_manifest, gpu_info, require_cuda, require_tensorrt, trt_logger,
    trt_major,
)

FP16_ON_11 = "TensorRT 11 takes precision from the graph: optimize --target tensorrt --fp16"

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


# -- profiles ---------------------------------------------------------------------------------
def derive_profiles(input_specs: Sequence[TensorSpec | Mapping], shapes=None, batches: Sequence[int] = (1, 8, 32),
                    seqs: Sequence[int] = (1, 128, 512), *, task: str | None = None,
                    model_dir: Path | None = None, dims: Mapping[str, tuple] | None = None) -> list[Profile]:
    """Optimization profiles ``[{input: (min, opt, max)}]`` for the inputs with dynamic dims.

    Without ``shapes``, the profiles the ``task`` gives for the model in ``model_dir``
    (``Task.profile_phases``: one for most tasks, where a text encoder's ``batch_size`` takes
    ``batches`` and ``sequence_length`` takes ``seqs``, as (min, opt, max), and an image classifier
    fixes channels, height and width; a decoder gets a prefill and a decode profile). ``dims``
    replaces the task's range of named dims (``{"past_sequence_length": (1, 256, 2047)}``). A dim
    named ``a + b`` (a decoder's ``attention_mask``) takes the sums of the ranges of ``a`` and ``b``.
    ``shapes`` is one profile as a mapping
    ``{input: (min, opt, max)}`` or as ``(input, (min, opt, max))`` pairs (what ``--shapes`` parses to),
    or a list of mappings for several profiles. Inputs it leaves out take their dims from the same
    dim names in the inputs it gives (``input_ids`` fixes ``batch_size`` for ``attention_mask``).

    Raises:
        UsageError: an unknown input or dim name, a rank other than the input's, not 0 <= min <= opt <= max
            (max >= 1), a fixed dim contradicted, one dim name given two ranges, ``dims`` with ``shapes``, or a
            dynamic dim nothing covers.
    """
    return list(profile_set(input_specs, shapes, batches, seqs, task=task, model_dir=model_dir, dims=dims).values())


def profile_set(input_specs: Sequence[TensorSpec | Mapping], shapes=None, batches: Sequence[int] = (1, 8, 32),
                seqs: Sequence[int] = (1, 128, 512), *, task: str | None = None, model_dir: Path | None = None,
                dims: Mapping[str, tuple] | None = None) -> dict[str, Profile]:
    """``derive_profiles`` with each profile's name: the task's phase (``default``; a decoder's
    ``prefill`` and ``decode``) or ``shapes`` / ``shapes[i]`` for profiles given as shapes."""
    specs = [s if isinstance(s, TensorSpec) else TensorSpec.from_dict(s) for s in input_specs]
    if not specs:
        raise UsageError("the artifact's manifest lists no inputs; re-export it (enginewright export)")
    for label, values in (("batches", batches), ("seqs", seqs)):
        if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
            raise UsageError(f"{label} must be (min, opt, max) with 1 <= min <= opt <= max, got {tuple(values)}")
    if shapes is not None:
        if dims:
            raise UsageError("--dims and --shapes both set the profile; give one (--shapes for whole inputs, --dims "
                             "for named dims of the task's default profiles)")
        given = _as_profiles(shapes)
        return {("shapes" if len(given) == 1 else f"shapes[{i}]"): _complete(specs, *_check_given(specs, p))
                for i, p in enumerate(given)}
    declared = {d for s in specs for d in s.shape if isinstance(d, str)}
    for name, rng in (dims or {}).items():
        if name not in declared:
            raise UsageError(f"--dims names dim {name!r}, which no input of the model has; its named dims are "
                             f"{sorted(declared)}")
        check_range(f"--dims {name}", rng)
    phases = get_task(task).profile_phases(model_dir, batches, seqs, {k: tuple(v) for k, v in (dims or {}).items()})
    return {name: _complete(specs, {}, named, hint=True) for name, named in phases.items()}


def check_range(label: str, rng) -> tuple[int, int, int]:
    """``(min, opt, max)`` of one dim as TensorRT's profiles take it: ``0 <= min <= opt <= max``, ``max >= 1``.

    Raises:
        UsageError: not three integers in that order.
    """
    if not (isinstance(rng, (tuple, list)) and len(rng) == 3 and all(isinstance(d, int) and not isinstance(d, bool)
                                                                    for d in rng)):
        raise UsageError(f"{label}: needs three integers MIN,OPT,MAX, got {rng!r}")
    if not 0 <= rng[0] <= rng[1] <= rng[2] or rng[2] < 1:
        raise UsageError(f"{label}: need 0 <= MIN <= OPT <= MAX and MAX >= 1, got {', '.join(map(str, rng))}")
    return tuple(rng)


def _as_profiles(shapes) -> list[dict]:
    if isinstance(shapes, Mapping):
        return [dict(shapes)]
    items = list(shapes)
    if items and all(isinstance(p, Mapping) for p in items):
        return [dict(p) for p in items]
    if items and all(isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str) for p in items):
        names = [n for n, _ in items]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise UsageError(f"--shapes gives input {dup[0]!r} twice; give each input once per profile")
        return [dict(items)]
    raise UsageError("shapes must map input names to (min, opt, max) shapes, e.g. {'input_ids': ((1, 8), (8, 128), (32, 512))}")


def _check_given(specs: list[TensorSpec], given: dict) -> tuple[dict, dict]:
    dims = {s.name: s.shape for s in specs}
    if unknown := sorted(set(given) - set(dims)):
        raise UsageError(f"--shapes names input {unknown[0]!r}, which the model lacks; its inputs are {sorted(dims)}")
    named: dict[str, tuple[int, int, int]] = {}
    out = {}
    for name, prof in given.items():
        mn, op, mx = check_profile(name, prof, dims[name])
        for axis, (a, b, c) in enumerate(zip(mn, op, mx)):
            declared = dims[name][axis]
            if isinstance(declared, str):
                if named.setdefault(declared, (a, b, c)) != (a, b, c):
                    raise UsageError(f"--shapes gives dim {declared!r} two ranges ({named[declared]} and {(a, b, c)}); "
                                     "inputs that share a dim must share its range")
        out[name] = (mn, op, mx)
    return out, named


def fill_profile(specs: Sequence[TensorSpec], given: Mapping) -> tuple[Profile, list[tuple[str, int, str | None]]]:
    """One profile from ``given`` ``{input: (min, opt, max)}``, the rule ``build --shapes`` and
    ``check --shapes`` share: an input left out takes its dynamic dims from the same dim names in
    the inputs given (``input_ids`` fixes ``batch_size`` for ``attention_mask``).

    Returns the profile and the dynamic dims nothing covers, as ``(input, axis, dim name)``.

    Raises:
        UsageError: an unknown input, a bad range or rank, a fixed dim contradicted, or one dim
            name given two ranges.
    """
    given, named = _check_given(list(specs), dict(given))
    return _fill(list(specs), given, named)


def _fill(specs: list[TensorSpec], given: dict, named: dict) -> tuple[Profile, list[tuple[str, int, str | None]]]:
    profile: Profile = {}
    uncovered = []
    for spec in specs:
        if all(isinstance(d, int) and d > 0 for d in spec.shape):
            continue  # static input: no profile entry
        if spec.name in given:
            profile[spec.name] = given[spec.name]
            continue
        mom = [[], [], []]
        covered = True
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int) and d > 0:
                rng = (d, d, d)
            elif isinstance(d, str) and d in named:
                rng = named[d]
            elif isinstance(d, str) and (parts := [p.strip() for p in d.split("+")]) and len(parts) > 1 \
                    and all(p in named for p in parts):  # a derived dim, e.g. past_sequence_length + sequence_length
                rng = tuple(sum(named[p][k] for p in parts) for k in range(3))
            else:
                uncovered.append((spec.name, axis, d))
                covered = False
                continue
            for k in range(3):
                mom[k].append(rng[k])
        if covered:
            profile[spec.name] = tuple(tuple(m) for m in mom)
    return profile, uncovered


def _complete(specs: list[TensorSpec], given: dict, named: dict, hint: bool = False) -> Profile:
    profile, uncovered = _fill(specs, given, named)
    if uncovered:
        name, axis, d = uncovered[0]
        what = "pass --shapes NAME:MIN,OPT,MAX for it" if hint else f"add {name}:MIN,OPT,MAX to --shapes"
        raise UsageError(f"input {name!r} dim {axis} ({d or 'unnamed'}) is dynamic and no profile covers it; {what}")
    return profile


# -- graph precision ----------------------------------------------------------------------------
def engine_cache_key(onnx_sha256: str, profiles: Sequence[Profile], precision: str, builder: Mapping,
                     trt_version: str, gpu: Mapping) -> str:
    blob = json.dumps({"onnx": onnx_sha256, "profiles": [{k: [list(s) for s in v] for k, v in p.items()} for p in profiles],
                       "precision": precision, "builder": dict(builder), "tensorrt": str(trt_version),
                       "gpu": gpu["name"], "cc": str(gpu["compute_capability"])}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# -- build ----------------------------------------------------------------------------------------
def build_engine(artifact, out, *, shapes=None, timing_cache=None, workspace_gib: float | None = None,
                 opt_level: int | None = None, sparsity: bool = False, version_compatible: bool = False,
                 hardware_compatible: bool = False, fp16_flag: bool = False, force: bool = False,
                 command: str | None = None, progress: bool = True, cache_dir=None,
                 dims: Mapping[str, tuple] | None = None) -> Artifact:
    """Build ``artifact`` (ONNX) into a TensorRT engine artifact at ``out``; returns it opened.

    Profiles: ``shapes``, or the task's defaults (``profile_set``) with ``dims`` replacing named dims;
    the manifest names them under ``builder.profile_names``.

    With ``cache_dir``, an engine already built there from the same ONNX, profiles, precision,
    options, TensorRT and GPU is copied instead of rebuilt. ``timing_cache`` is read if it exists and
    written back after the build.

    Raises:
        UsageError: not an ONNX artifact; bad shapes or options; output exists without ``force``;
            TensorRT or a GPU missing; ``fp16_flag`` on TensorRT 11 or on an FP16 graph; the ONNX
            parser or the builder rejects the model.
    """
    art = open_input(artifact, "onnx", "build")
    writer = ArtifactWriter(out, force=force, inputs=[art.path])
    inputs, outputs = (art.inputs, art.outputs) if art.inputs else _graph_io(art)
    named_profiles = profile_set(inputs, shapes, task=art.task, model_dir=art.path, dims=dims)
    profiles = list(named_profiles.values())
    if workspace_gib is not None and not workspace_gib > 0:
        raise UsageError(f"--workspace must be a positive number of GiB, got {workspace_gib}")
    if opt_level is not None and opt_level not in range(6):
        raise UsageError(f"--opt-level must be 0..5 (TensorRT's builder optimization level), got {opt_level}")
    if timing_cache is not None and not Path(timing_cache).parent.is_dir():
        raise UsageError(f"--timing-cache {timing_cache}: directory {Path(timing_cache).parent} does not exist")
    precision = graph_precision(art.model_file)
    if fp16_flag and precision not in ("fp32", "int8"):
        raise UsageError(f"{art.path}: --fp16 is for FP32 and Q/DQ INT8 graphs; this graph is already {precision} and "
                         "builds as it is")
    built_as = {"fp32": "fp16", "int8": "int8+fp16"}[precision] if fp16_flag else precision

    trt = require_tensorrt()
    require_cuda()
    major = trt_major(trt.__version__)
    if fp16_flag and major >= 11:
        raise UsageError(FP16_ON_11)
    gpu = gpu_info()
    if hardware_compatible and cc_tuple(gpu["compute_capability"]) < AMPERE:
        raise UsageError(f"--hardware-compatible builds for Ampere and newer GPUs; this GPU ({gpu['name']}) has compute "
                         f"capability {gpu['compute_capability']}: build without it")
    builder_options = {
        "workspace_gib": workspace_gib, "opt_level": opt_level, "sparsity": bool(sparsity),
        "version_compatible": bool(version_compatible), "hardware_compatible": bool(hardware_compatible),
        "fp16_flag": bool(fp16_flag), "int8_flag": bool(fp16_flag) and precision == "int8",
        "strongly_typed": not fp16_flag, "profile_names": list(named_profiles),
        "profile_dims": {k: list(v) for k, v in (dims or {}).items()},
    }
    onnx_sha = model_files_sha256(art)
    key = engine_cache_key(onnx_sha, profiles, built_as, builder_options, trt.__version__, gpu)
    cached = Path(cache_dir) / f"{key}.plan" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        plan = cached.read_bytes()
        print(f"engine cache hit: {cached} (same ONNX, profiles, precision, options, TensorRT and GPU); not rebuilt",
              file=sys.stderr)
    else:
        plan = _build(trt, major, art.model_file, profiles, builder_options, timing_cache, progress)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            _write_bytes_atomic(cached, plan)
    manifest = EngineManifest.from_dict(engine_manifest(
        tensorrt_version=trt.__version__, gpu=gpu, profiles=profiles, precision=built_as,
        builder_options=builder_options, onnx_sha256=onnx_sha, version_compatible=version_compatible,
        hardware_compatible=hardware_compatible, inputs=specs_to_list(inputs), outputs=specs_to_list(outputs),
        task=art.task, command=command, cache_key=key,
        source=source_record(art),
    ))

    def fill(tmp):
        (tmp / MODEL_FILE).write_bytes(plan)
        return manifest

    return writer.write(fill, companions_from=art.path)


def _graph_io(art: Artifact) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs from the graph itself, for a bare ``model.onnx`` without a manifest."""
    from exporter.onnx_file import graph_specs

    inputs, outputs, _ = graph_specs(art.model_file)
    return inputs, outputs


def _build(trt, major: int, onnx_path: Path, profiles: list[Profile], opts: dict, timing_cache, progress: bool) -> bytes:
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, major, opts["strongly_typed"]))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external data is found beside it
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        for e in errors:
            print(f"TensorRT ONNX parser: node {e.node_name() or '?'} [{e.node_operator() or '?'}]: {e.desc()}", file=sys.stderr)
        first = errors[0] if errors else None
        where = f"node {first.node_name() or '?'} [{first.node_operator() or '?'}]: {first.desc()}" if first else "no detail"
        raise UsageError(f"{onnx_path}: TensorRT {trt.__version__}'s ONNX parser rejects the model ({len(errors)} error(s); "
                         f"first: {where}); run enginewright check --target tensorrt")
    config = builder.create_builder_config()
    if opts["workspace_gib"] is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts["workspace_gib"] * (1 << 30)))
    if opts["opt_level"] is not None:
        config.builder_optimization_level = opts["opt_level"]
    if opts["sparsity"]:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if opts["version_compatible"]:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if opts["hardware_compatible"]:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if opts["fp16_flag"]:  # only reached on TensorRT 10 (build_engine refuses it on 11)
        config.set_flag(trt.BuilderFlag.FP16)
    if opts.get("int8_flag"):  # a weakly typed network with Q/DQ layers does not build without it
        config.set_flag(trt.BuilderFlag.INT8)
    for prof in profiles:
        p = builder.create_optimization_profile()
        for name, (mn, op, mx) in prof.items():
            p.set_shape(name, mn, op, mx)
        config.add_optimization_profile(p)
    cache = None
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        try:
            cache = config.create_timing_cache(blob)
        except Exception:  # a corrupt file: TensorRT's bindings raise rather than return None
            cache = None
        # set_timing_cache returns False for a cache from another GPU or TensorRT version
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            print(f"warning: --timing-cache {timing_cache}: TensorRT {trt.__version__} cannot use it on this GPU (made "
                  "on another GPU or TensorRT version, or damaged); building with a new one, which replaces it",
                  file=sys.stderr)
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor  # kept referenced until the build returns
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UsageError(f"{onnx_path}: TensorRT could not build an engine (see the TensorRT errors above); check the "
                         "profiles (--shapes) against the model and run enginewright check --target tensorrt")
    if cache is not None:
        _write_bytes_atomic(Path(timing_cache), bytes(memoryview(cache.serialize())))
    return bytes(memoryview(plan))


def _network_flags(trt, major: int, strongly_typed: bool) -> int:
    """TensorRT 10: STRONGLY_TYPED keeps the graph's types (without it, builder flags choose).
    TensorRT 11: every network is strongly typed and the flag is deprecated, so none is passed."""
    if major >= 11 or not strongly_typed:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _progress_monitor(trt):
    """A tqdm bar per build phase, through TensorRT's IProgressMonitor (called from builder threads)."""
    from tqdm.auto import tqdm

    class TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, tqdm] = {}
            self._lock = threading.Lock()

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, leave=parent_phase is None,
                                              unit="step", file=sys.stderr)

        def step_complete(self, phase_name, step):
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(max(0, step + 1 - bar.n))
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return TqdmProgressMonitor()


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
