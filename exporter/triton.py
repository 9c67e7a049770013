"""``triton``: a Triton Inference Server model repository from ONNX and TensorRT artifacts.

Each model gets ``<name>/config.pbtxt`` and ``<name>/1/`` with its model file. The configuration is
built as Triton's own ``ModelConfig`` protobuf (the schema ``tritonclient`` ships), written in text
format and parsed back, so a field Triton does not know cannot reach the file.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from exporter.writer import ArtifactWriter, copy_companions
from runtimes.artifact import Artifact, load_artifact
from runtimes.errors import UsageError
from runtimes.integrity import onnx_data_files, require_listed, require_unchanged

_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
          "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
_PLATFORM = {"onnx": ("onnxruntime_onnx", "model.onnx"), "trt": ("tensorrt_plan", "model.plan")}


@dataclass(frozen=True)
class TritonConfig:
    """``max_batch_size`` 0 turns batching off (dims then include the batch axis); None: 32 for encoders,
    0 for decoders (whose model is always unbatched)."""

    max_batch_size: int | None = None
    dynamic_batching: bool = True
    max_queue_delay_us: int = 100
    instance_count: int = 1
    device: str = "gpu"  # gpu | cpu
    tensorrt_accelerator: bool = False  # onnx models: ONNX Runtime's TensorRT EP inside Triton
    fp16_accelerator: bool = False
    cuda_graphs: bool = False  # tensorrt_plan models
    ensemble: bool = False  # put the tokenizer (Python backend) in front of each model
    ensemble_max_length: int = 128
    max_new_tokens: int = 64  # decoders: the generate model's default (a request may ask for more or fewer)

    def __post_init__(self):
        if self.batch < 0 or self.instance_count < 1 or self.max_queue_delay_us < 0:
            raise UsageError("--max-batch-size must be >= 0, --instances >= 1 and --max-queue-delay-us >= 0")
        if self.device not in ("gpu", "cpu"):
            raise UsageError(f"--device {self.device!r}: choose gpu or cpu")
        if self.ensemble and (self.batch < 1 or self.ensemble_max_length < 2):
            raise UsageError("--ensemble needs --max-batch-size >= 1 and --ensemble-max-length >= 2")
        if (self.tensorrt_accelerator or self.cuda_graphs) and self.device != "gpu":
            raise UsageError("the TensorRT accelerator and CUDA graphs need --device gpu")
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens {self.max_new_tokens}: generate at least 1 token")

    @property
    def batch(self) -> int:
        """The max_batch_size of an encoder's model."""
        return 32 if self.max_batch_size is None else self.max_batch_size


def model_name(art: Artifact) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", art.path.resolve().name)


def model_config(art: Artifact, name: str, cfg: TritonConfig):
    """Triton's ``ModelConfig`` message for one artifact.

    Raises:
        UsageError: an artifact Triton cannot serve directly, or specs Triton cannot express.
    """
    from tritonclient.grpc import model_config_pb2 as mc

    if art.kind not in _PLATFORM:
        raise UsageError(f"{art.path}: Triton serves ONNX or TensorRT artifacts; run enginewright export (and build) first")
    platform, _ = _PLATFORM[art.kind]
    if art.kind == "trt" and cfg.tensorrt_accelerator:
        raise UsageError(f"{art.path}: a TensorRT engine needs no TensorRT accelerator; drop --tensorrt-accelerator")
    if not art.inputs or not art.outputs:
        raise UsageError(f"{art.path}: the manifest has no input/output specs; re-export the artifact")
    c = mc.ModelConfig(name=name, platform=platform, max_batch_size=cfg.batch)
    for specs, field in ((art.inputs, c.input), (art.outputs, c.output)):
        for s in specs:
            if s.dtype not in _TYPES:
                raise UsageError(f"{art.path}: tensor {s.name!r} has dtype {s.dtype}, which this writer does not map to Triton")
            dims = [d if isinstance(d, int) and d > 0 else -1 for d in s.shape]
            if cfg.batch > 0:
                if not dims or dims[0] != -1:
                    raise UsageError(f"{art.path}: tensor {s.name!r} has no dynamic batch axis; pass --max-batch-size 0")
                dims = dims[1:]
            field.add(name=s.name, data_type=getattr(mc.DataType, _TYPES[s.dtype]), dims=dims)
    if cfg.batch > 0 and cfg.dynamic_batching:
        c.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
    kind = mc.ModelInstanceGroup.Kind.KIND_GPU if cfg.device == "gpu" else mc.ModelInstanceGroup.Kind.KIND_CPU
    c.instance_group.add(count=cfg.instance_count, kind=kind)
    if cfg.tensorrt_accelerator:
        acc = c.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        acc.parameters["precision_mode"] = "FP16" if cfg.fp16_accelerator else "FP32"
    if cfg.cuda_graphs:
        c.optimization.cuda.graphs = True
    return c


def config_text(config) -> str:
    """Text format, validated by parsing it back with Triton's schema."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    text = text_format.MessageToString(config)
    text_format.Parse(text, mc.ModelConfig())
    return text


def ensemble_configs(art: Artifact, name: str, cfg: TritonConfig):
    """The tokenizer (Python backend) model's and the ensemble's ``ModelConfig`` messages."""
    from tritonclient.grpc import model_config_pb2 as mc

    tok = mc.ModelConfig(name=f"{name}_tokenizer", backend="python", max_batch_size=cfg.batch)
    tok.input.add(name="TEXT", data_type=mc.DataType.TYPE_STRING, dims=[1])
    for s in art.inputs:
        tok.output.add(name=s.name, data_type=mc.DataType.TYPE_INT64, dims=[cfg.ensemble_max_length])
    tok.instance_group.add(count=cfg.instance_count, kind=mc.ModelInstanceGroup.Kind.KIND_CPU)
    ens = mc.ModelConfig(name=f"{name}_ensemble", platform="ensemble", max_batch_size=cfg.batch)
    ens.input.add(name="TEXT", data_type=mc.DataType.TYPE_STRING, dims=[1])
    for s in art.outputs:
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in s.shape][1:]
        ens.output.add(name=s.name, data_type=getattr(mc.DataType, _TYPES[s.dtype]), dims=dims)
    step = ens.ensemble_scheduling.step.add(model_name=tok.name, model_version=-1)
    step.input_map["TEXT"] = "TEXT"
    for s in art.inputs:
        step.output_map[s.name] = f"tok_{s.name}"
    step = ens.ensemble_scheduling.step.add(model_name=name, model_version=-1)
    for s in art.inputs:
        step.input_map[s.name] = f"tok_{s.name}"
    for s in art.outputs:
        step.output_map[s.name] = s.name
    return tok, ens


def _write_tokenizer_model(art: Artifact, root: Path, tok_config, cfg: TritonConfig) -> None:
    import json

    version = root / tok_config.name / "1"
    (version / "tokenizer").mkdir(parents=True)
    shutil.copy2(Path(__file__).resolve().parent / "triton_assets" / "tokenizer_model.py", version / "model.py")
    if not copy_companions(art.path, version / "tokenizer", skip=("config.json",)):
        raise UsageError(f"{art.path}: no tokenizer files to put in front of the model; --ensemble needs them")
    (version / "settings.json").write_text(json.dumps({"input_names": [s.name for s in art.inputs],
                                                        "max_length": cfg.ensemble_max_length}))
    (root / tok_config.name / "config.pbtxt").write_text(config_text(tok_config), encoding="utf-8")


def write_repository(artifacts: Sequence, out: str | os.PathLike, *, config: TritonConfig = TritonConfig(),
                     force: bool = False) -> Path:
    """Write a model repository with one model per artifact (version 1); a decoder (task
    text-generation) gets its KV-cache graph, unbatched, and a ``<name>_generate`` Python-backend
    model that runs the generation loop over it (``exporter/triton_llm.py``).

    Raises:
        UsageError: bad artifacts or settings, two artifacts with one name, output exists without ``force``.
    """
    from exporter import triton_llm

    arts = [load_artifact(a) for a in artifacts]
    if not arts:
        raise UsageError("triton needs at least one ONNX or TensorRT artifact")
    names = [model_name(a) for a in arts]
    decoders = [triton_llm.is_decoder(a) for a in arts]
    taken = names + [f"{n}_{s}" for n, d in zip(names, decoders) for s in (("generate",) if d else ())] + [
        f"{n}_{s}" for n, d in zip(names, decoders) if config.ensemble and not d for s in ("tokenizer", "ensemble")]
    if len(set(taken)) != len(taken):
        raise UsageError(f"two artifacts share the model name {sorted({n for n in taken if taken.count(n) > 1})}; "
                         "Triton model names must differ")
    generated, configs = [], []
    for art, name, decoder in zip(arts, names, decoders):
        if decoder:
            triton_llm.check_decoder(art, config)
            dec, gen = triton_llm.decoder_configs(art, name, config, model_config)
            configs.append(config_text(dec))
            generated.append((art, gen, triton_llm.generate_settings(art, name, config.max_new_tokens)))
        else:
            configs.append(config_text(model_config(art, name, config)))
    files = [_model_files(a) for a in arts]
    ensembles = [(a, *ensemble_configs(a, n, config)) for a, n, d in zip(arts, names, decoders)
                 if config.ensemble and not d]
    with ArtifactWriter(out, force=force, inputs=[a.path for a in arts]).directory(mark=True) as tmp:
        for art, tok, ens in ensembles:
            _write_tokenizer_model(art, tmp, tok, config)
            (tmp / ens.name / "1").mkdir(parents=True)  # ensembles have a version folder but no model file
            (tmp / ens.name / "config.pbtxt").write_text(config_text(ens), encoding="utf-8")
        for art, gen, settings in generated:
            triton_llm.write_generate_model(art, tmp, gen, settings, config_text)
        for art, name, text, (model, data) in zip(arts, names, configs, files):
            version = tmp / name / "1"
            version.mkdir(parents=True)
            (tmp / name / "config.pbtxt").write_text(text, encoding="utf-8")
            shutil.copy2(model, version / _PLATFORM[art.kind][1])
            for extra in data:  # ONNX external data, at the location the graph names, relative to the model
                (version / extra.relative_to(model.parent)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(extra, version / extra.relative_to(model.parent))
    return Path(out)


def _model_files(art: Artifact) -> tuple[Path, list[Path]]:
    """The model file and the external-data files it names, checked before anything is copied: each lies
    inside the artifact and every file the manifest lists still has its recorded sha256.

    Raises:
        UsageError: a path leaves the artifact, a listed file changed or is missing, or the graph is invalid.
    """
    model = art.model_file
    require_unchanged(art, "triton")
    data = onnx_data_files(model, art.path) if art.kind == "onnx" else []
    if any(not d.is_relative_to(model.parent) for d in data):
        raise UsageError(f"{model}: external data outside the model's folder cannot be placed in a Triton repository; "
                         "re-export the artifact")
    require_listed(art, [model, *data], "triton")
    return model, data
