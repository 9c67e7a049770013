"""TensorRT engine building and running: profile derivation and validation, profile selection and
engine compatibility run anywhere; building and running engines need TensorRT and a GPU (marked gpu).

Never imports tensorrt at module import: the GPU tests import it inside, so the rest runs without it.
"""

import importlib.util
import json

import numpy as np
import pytest

from exporter.trtbuild import FP16_ON_11, build_engine, derive_profiles, graph_precision
from runtimes.artifact import Artifact
from runtimes.errors import UsageError
from runtimes.specs import TensorSpec
from runtimes.trt import check_engine_compat, engine_manifest, select_profile, trt_major
from runtimes.trt.engine import INSTALL_HINT
from runtimes.trt.runner import TensorRTRunner

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_no_trt = pytest.mark.skipif(HAS_TRT, reason="checks the message a machine without TensorRT gives")

SPECS = [TensorSpec(n, "int64", ("batch_size", "sequence_length")) for n in ("input_ids", "attention_mask", "token_type_ids")]
IDS = ((1, 8), (8, 128), (32, 512))


def _manifest(version="10.8.0.43", cc="9.0", name="NVIDIA H100", vc=False, hw=False):
    return engine_manifest(tensorrt_version=version, gpu={"name": name, "compute_capability": cc}, profiles=[],
                           precision="fp32", builder_options={}, onnx_sha256="0" * 64, version_compatible=vc,
                           hardware_compatible=hw)


# -- profiles ---------------------------------------------------------------------------------
def test_derive_profiles_from_named_dims():
    (profile,) = derive_profiles(SPECS)
    assert set(profile) == {"input_ids", "attention_mask", "token_type_ids"}
    assert profile["input_ids"] == ((1, 1), (8, 128), (32, 512))
    (small,) = derive_profiles([s.to_dict() for s in SPECS], batches=(1, 2, 4), seqs=(8, 16, 64))
    assert small["attention_mask"] == ((1, 8), (2, 16), (4, 64))


def test_derive_profiles_skips_static_inputs_and_keeps_fixed_dims():
    specs = [TensorSpec("input_ids", "int64", ("batch_size", 16)), TensorSpec("scale", "float32", (1,))]
    (profile,) = derive_profiles(specs)
    assert profile == {"input_ids": ((1, 16), (8, 16), (32, 16))}


def test_derive_profiles_refuses_an_unnamed_dynamic_dim():
    with pytest.raises(UsageError, match=r"'pixel_values' dim 2 \(height\).*--shapes"):
        derive_profiles([TensorSpec("pixel_values", "float32", ("batch_size", 3, "height", "width"))])


def test_explicit_shapes_fill_inputs_that_share_dim_names():
    (profile,) = derive_profiles(SPECS, [("input_ids", IDS)])  # the form --shapes parses to
    assert profile["token_type_ids"] == IDS and profile["attention_mask"] == IDS
    profiles = derive_profiles(SPECS, [{"input_ids": IDS}, {"input_ids": ((1, 1), (1, 16), (1, 16))}])
    assert [p["attention_mask"][2] for p in profiles] == [(32, 512), (1, 16)]


@pytest.mark.parametrize("shapes, message", [
    ({"input_ids": ((1, 8), (8, 4), (32, 512))}, r"input_ids dim 1: need 0 <= MIN <= OPT <= MAX and MAX >= 1, got 8, 4, 512"),
    ({"input_ids": ((2, 8), (1, 128), (32, 512))}, r"dim 0: need 0 <= MIN <= OPT <= MAX"),
    ({"pixel_values": IDS}, r"names input 'pixel_values', which the model lacks"),
    ({"input_ids": ((1,), (8,), (32,))}, r"ranks 1/1/1, but input input_ids has rank 2"),
    ({"input_ids": ((1, 8), (8, 128))}, r"needs three shapes"),
    ({"input_ids": IDS, "attention_mask": ((1, 8), (8, 64), (32, 512))}, r"dim 'sequence_length' two ranges"),
    ([("input_ids", IDS), ("input_ids", IDS)], r"gives input 'input_ids' twice"),
])
def test_explicit_shapes_are_validated(shapes, message):
    with pytest.raises(UsageError, match=message):
        derive_profiles(SPECS, shapes)


def test_explicit_shapes_cannot_contradict_a_fixed_dim():
    specs = [TensorSpec("input_ids", "int64", ("batch_size", 16))]
    with pytest.raises(UsageError, match="fixes it at 16"):
        derive_profiles(specs, {"input_ids": IDS})


# -- profile selection ----------------------------------------------------------------------------
PROFILES = [{"input_ids": ((1, 1), (1, 128), (1, 512))}, {"input_ids": ((2, 1), (16, 128), (32, 512))}]


def test_select_profile_picks_the_covering_profile():
    assert select_profile(PROFILES, {"input_ids": (1, 40), "other": (3,)}) == 0
    assert select_profile(PROFILES, {"input_ids": (8, 512)}) == 1
    assert select_profile([], {"input_ids": (8, 512)}) == 0


def test_select_profile_names_input_shape_and_ranges_outside_all():
    with pytest.raises(UsageError) as e:
        select_profile(PROFILES, {"input_ids": (8, 600)})
    msg = str(e.value)
    assert "'input_ids' has shape 8x600" in msg and "profile 0: 1x1..1x512" in msg and "profile 1: 2x1..32x512" in msg
    assert "\n" not in msg


# -- engine compatibility ---------------------------------------------------------------------
def test_same_version_and_gpu_is_compatible():
    assert check_engine_compat(_manifest(), "10.8.0.43", "NVIDIA H100", (9, 0)) is None
    assert check_engine_compat(_manifest(), "10.8.0.43", "NVIDIA H200", "9.0") is None  # the GPU model may differ


def test_other_patch_version_is_refused():
    """TensorRT itself refuses those ("expecting library version 10.0.1.6 got 10.0.0.6")."""
    reason = check_engine_compat(_manifest(), "10.8.1.2", "NVIDIA H100", (9, 0))
    assert reason and "exact TensorRT version" in reason
    assert check_engine_compat(_manifest(vc=True), "10.8.1.2", "NVIDIA H100", (9, 0)) is None


def test_other_minor_version_is_refused_unless_version_compatible():
    reason = check_engine_compat(_manifest(), "10.9.0.34", "NVIDIA H100", (9, 0))
    assert reason and "10.8.0.43" in reason and "10.9.0.34" in reason and "--version-compatible" in reason
    assert check_engine_compat(_manifest(vc=True), "10.9.0.34", "NVIDIA H100", (9, 0)) is None
    older = check_engine_compat(_manifest(vc=True), "10.7.0.23", "NVIDIA H100", (9, 0))
    assert older and "upgrade TensorRT" in older


def test_other_compute_capability_is_refused_unless_hardware_compatible():
    reason = check_engine_compat(_manifest(), "10.8.0.43", "NVIDIA A100", (8, 0))
    assert reason and "compute capability 9.0" in reason and "NVIDIA A100 (8.0)" in reason
    assert check_engine_compat(_manifest(hw=True), "10.8.0.43", "NVIDIA A100", (8, 0)) is None
    turing = check_engine_compat(_manifest(hw=True), "10.8.0.43", "Tesla T4", (7, 5))
    assert turing and "Ampere" in turing


def test_manifest_without_build_facts_is_refused():
    assert "lacks" in check_engine_compat({}, "10.8.0.43", "x", (9, 0))


def test_trt_major():
    assert trt_major("10.15.1.29") == 10 and trt_major("11.0.0") == 11


# -- build on a machine without TensorRT ------------------------------------------------------------
def test_graph_precision_of_the_tiny_export(tiny_onnx):
    assert graph_precision(tiny_onnx / "model.onnx") == "fp32"


def test_build_refuses_a_hugging_face_artifact_first(tiny_bert, tmp_path):
    with pytest.raises(UsageError, match="build takes an ONNX artifact .* 'hf'"):
        build_engine(tiny_bert, tmp_path / "engine")


def test_build_validates_shapes_before_requiring_tensorrt(tiny_onnx, tmp_path):
    with pytest.raises(UsageError, match="need 0 <= MIN <= OPT <= MAX"):
        build_engine(tiny_onnx, tmp_path / "engine", shapes={"input_ids": ((1, 8), (8, 4), (32, 128))})
    with pytest.raises(UsageError, match="opt-level"):
        build_engine(tiny_onnx, tmp_path / "engine", opt_level=9)


def test_fp16_flag_is_refused_on_an_fp16_graph_before_tensorrt(tiny_onnx, tmp_path):
    from exporter.optimize import optimize

    fp16 = optimize(tiny_onnx, tmp_path / "fp16", target="tensorrt", fp16=True, progress=False)
    with pytest.raises(UsageError, match="--fp16 is for FP32 and Q/DQ INT8 graphs; this graph is already fp16"):
        build_engine(fp16, tmp_path / "engine", fp16_flag=True)


@needs_no_trt
def test_build_without_tensorrt_says_what_to_install(tiny_onnx, tmp_path):
    with pytest.raises(UsageError) as e:
        build_engine(tiny_onnx, tmp_path / "engine", shapes={"input_ids": ((1, 1), (4, 32), (8, 128))})
    assert str(e.value) == INSTALL_HINT and e.value.exit_code == 2
    assert not (tmp_path / "engine").exists()


def test_hardware_compatible_build_on_a_pre_ampere_gpu_is_refused(tiny_onnx, tmp_path, monkeypatch):
    """TensorRT's AMPERE_PLUS level needs an Ampere or newer build GPU; say so before building."""
    import types

    import exporter.trtbuild as tb

    monkeypatch.setattr(tb, "require_tensorrt", lambda: types.SimpleNamespace(__version__="10.8.0.43"))
    monkeypatch.setattr(tb, "require_cuda", lambda: None)
    monkeypatch.setattr(tb, "gpu_info", lambda: {"name": "Tesla T4", "compute_capability": "7.5"})
    with pytest.raises(UsageError, match="Ampere and newer.*Tesla T4.*7.5"):
        build_engine(tiny_onnx, tmp_path / "engine", hardware_compatible=True)
    assert not (tmp_path / "engine").exists()


def _fake_trt_artifact(path):
    path.mkdir()
    (path / "model.plan").write_bytes(b"ftrt\x00\x01")  # truncated: not an engine
    manifest = _manifest()
    manifest["inputs"] = [s.to_dict() for s in SPECS]
    (path / "manifest.json").write_text(json.dumps(manifest))
    return Artifact(path, "trt", None, manifest)


@needs_no_trt
def test_runner_without_tensorrt_says_what_to_install(tmp_path):
    runner = TensorRTRunner(_fake_trt_artifact(tmp_path / "engine"), device="cuda")
    with pytest.raises(UsageError) as e:
        runner.activate()
    assert str(e.value) == INSTALL_HINT
    assert not runner.is_active


def test_runner_accepts_only_trt_artifacts_on_cuda(tiny_onnx, tmp_path):
    onnx_art = Artifact(tiny_onnx, "onnx", None, {})
    with pytest.raises(UsageError, match="cannot run on tensorrt"):
        TensorRTRunner(onnx_art)
    with pytest.raises(UsageError, match="unknown device"):
        TensorRTRunner(_fake_trt_artifact(tmp_path / "engine"), device="cpu")


def test_importing_the_backend_imports_no_tensorrt():
    import subprocess
    import sys

    code = ("import sys, runtimes.trt, runtimes.trt.runner, exporter.trtbuild; "
            "assert 'tensorrt' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


class _FakeContext:
    """TensorRT's IExecutionContext as far as the runner drives it, over host memory: outputs get
    the shape the input shapes imply, and ``execute_async_v3`` reads ``input_ids`` through its
    bound address and writes ``last_hidden_state[b, s, k] = input_ids[b, s] + k`` through the output's."""

    def __init__(self):
        self.calls, self.shapes, self.addresses = [], {}, {}

    def set_optimization_profile_async(self, index, stream):
        self.calls.append(("profile", index))
        return True

    def set_input_shape(self, name, shape):
        self.calls.append(("shape", name, tuple(shape)))
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return (*self.shapes["input_ids"], 3)

    def set_tensor_address(self, name, address):
        self.calls.append(("address", name))
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream):
        import ctypes

        self.calls.append(("execute",))
        b, s = self.shapes["input_ids"]
        ids = np.frombuffer(ctypes.string_at(self.addresses["input_ids"], b * s * 8), np.int64).reshape(b, s)
        out = (ids[..., None] + np.arange(3)).astype(np.float32)
        ctypes.memmove(self.addresses["last_hidden_state"], out.ctypes.data, out.nbytes)
        return True


@pytest.mark.parametrize("dtype", ["BF16", "FP8"])
def test_runner_refuses_engine_io_it_cannot_bind(dtype, tmp_path):
    """numpy has no BF16 or FP8: such an engine input could not be fed nor an output returned."""
    import types

    engine = types.SimpleNamespace(get_tensor_dtype=lambda name: types.SimpleNamespace(name=dtype),
                                   get_tensor_shape=lambda name: (-1, 8))
    runner = TensorRTRunner.__new__(TensorRTRunner)
    runner.artifact, runner._engine = types.SimpleNamespace(path=tmp_path), engine
    with pytest.raises(UsageError, match=f"engine tensor 'logits' is TensorRT {dtype}, which this runner cannot bind"):
        runner._spec("logits", None)
    engine.get_tensor_dtype = lambda name: types.SimpleNamespace(name="HALF")
    assert runner._spec("logits", TensorSpec("logits", "float16", ("batch_size", 8))) == \
        TensorSpec("logits", "float16", ("batch_size", 8))


def test_runner_binds_every_tensor_and_reads_back_what_the_engine_wrote():
    """The binding logic without a GPU: profile chosen by the feed's shape and set once, every
    input's shape and address set, outputs allocated at the shape TensorRT reports, one launch,
    results copied back (a method defined twice once broke exactly this, unseen without a GPU)."""
    pytest.importorskip("torch")

    class _Stream:
        cuda_stream = 0

        def synchronize(self):
            pass

    runner = TensorRTRunner.__new__(TensorRTRunner)
    runner._buffers_on, runner.cuda_graph, runner._graph = "cpu", False, None
    runner._context, runner._stream, runner._active_profile = _FakeContext(), _Stream(), None
    runner._profiles = [{n: ((1, 1), (1, 8), (1, 16)) for n in ("input_ids", "attention_mask")},
                        {n: ((2, 1), (8, 64), (32, 128)) for n in ("input_ids", "attention_mask")}]
    runner._outputs = [TensorSpec("last_hidden_state", "float32", ("batch_size", "sequence_length", 3))]
    feeds = {"input_ids": np.arange(20, dtype=np.int64).reshape(4, 5), "attention_mask": np.ones((4, 5), np.int64)}
    out = runner.infer_impl(feeds)
    np.testing.assert_array_equal(out["last_hidden_state"], feeds["input_ids"][..., None] + np.arange(3))
    calls = runner._context.calls
    assert calls[0] == ("profile", 1)  # batch 4 lies outside profile 0
    assert {c for c in calls if c[0] == "shape"} == {("shape", "input_ids", (4, 5)), ("shape", "attention_mask", (4, 5))}
    assert {c[1] for c in calls if c[0] == "address"} == {"input_ids", "attention_mask", "last_hidden_state"}
    assert calls[-1] == ("execute",) and calls.count(("execute",)) == 1
    runner._context.calls.clear()
    runner.infer_impl({n: a[:2] for n, a in feeds.items()})
    assert ("profile", 1) not in runner._context.calls  # same profile: not set again
    with pytest.raises(UsageError, match="input_ids"):
        runner.infer_impl({n: np.ones((64, 5), np.int64) for n in feeds})  # batch 64: outside every profile


# -- GPU: build and run -----------------------------------------------------------------------
TINY_SHAPES = {"input_ids": ((1, 1), (4, 32), (8, 128))}


def _feeds(batch=4, seq=24, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[1:, seq // 2:] = 0
    return {"input_ids": rng.integers(5, 60, size=(batch, seq), dtype=np.int64), "attention_mask": mask,
            "token_type_ids": np.zeros((batch, seq), dtype=np.int64)}


def _gpu_or_skip():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (GPU machines only)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no NVIDIA GPU visible to torch")
    return trt


def _ort(path, feeds):
    from runtimes import open_runner

    with open_runner(path, "onnxruntime:cpu", graph_optimization="disabled") as r:
        return r.infer(feeds)


@pytest.mark.gpu
def test_fp32_engine_matches_onnxruntime(tiny_onnx, tmp_path):
    _gpu_or_skip()
    cache = tmp_path / "timing.cache"
    art = build_engine(tiny_onnx, tmp_path / "fp32", shapes=TINY_SHAPES, timing_cache=cache, progress=False,
                       cache_dir=tmp_path / "engines")
    assert art.manifest["precision"] == "fp32" and cache.stat().st_size > 0
    feeds = _feeds()
    want = _ort(tiny_onnx, feeds)
    with TensorRTRunner(art) as runner:
        assert [s.name for s in runner.input_specs()] == ["input_ids", "attention_mask", "token_type_ids"]
        assert runner.input_specs()[0].shape == ("batch_size", "sequence_length")
        got = runner.infer(feeds)
        with pytest.raises(UsageError, match="outside every optimization profile"):
            runner.infer(_feeds(batch=16))
    for name, ref in want.items():  # TF32 matmuls: FP32 within ~1e-3 on a 32-wide model
        np.testing.assert_allclose(got[name], ref, atol=5e-3, rtol=5e-3)
    again = build_engine(tiny_onnx, tmp_path / "again", shapes=TINY_SHAPES, progress=False, cache_dir=tmp_path / "engines")
    assert again.manifest["cache_key"] == art.manifest["cache_key"]
    assert (tmp_path / "again" / "model.plan").read_bytes() == (tmp_path / "fp32" / "model.plan").read_bytes()


@pytest.mark.gpu
def test_qdq_engine_is_close_to_onnxruntime(tiny_onnx, tmp_path):
    trt = _gpu_or_skip()
    from evaluation.data import load_texts
    from exporter.quantize import QuantizeConfig, quantize

    q = quantize(tiny_onnx, tmp_path / "q", config=QuantizeConfig(target="tensorrt"), calib=load_texts(None), progress=False)
    art = build_engine(q, tmp_path / "int8", shapes=TINY_SHAPES, progress=False)
    assert art.manifest["precision"] == "int8" and art.manifest["builder"]["strongly_typed"]
    feeds = _feeds()
    want = _ort(q.path, feeds)
    with TensorRTRunner(art, cuda_graph=True) as runner:
        got = runner.infer(feeds)
        replayed = runner.infer(feeds)
    name = next(iter(want))
    a, b = got[name].ravel(), want[name].ravel()
    assert float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) > 0.99
    np.testing.assert_array_equal(replayed[name], got[name])
    if trt_major(trt.__version__) < 11:  # INT8 with the float layers in FP16: weakly typed, INT8 + FP16 flags
        mixed = build_engine(q, tmp_path / "int8-fp16", shapes=TINY_SHAPES, fp16_flag=True, progress=False)
        assert mixed.manifest["precision"] == "int8+fp16" and mixed.manifest["builder"]["int8_flag"]
        with TensorRTRunner(mixed) as runner:
            c = runner.infer(feeds)[name].ravel()
        assert float(c @ b / (np.linalg.norm(c) * np.linalg.norm(b))) > 0.99


@pytest.mark.gpu
def test_fp16_flag_follows_the_tensorrt_major(tiny_onnx, tmp_path):
    trt = _gpu_or_skip()
    if trt_major(trt.__version__) >= 11:
        with pytest.raises(UsageError, match=FP16_ON_11.split(":")[0]):
            build_engine(tiny_onnx, tmp_path / "fp16", shapes=TINY_SHAPES, fp16_flag=True, progress=False)
        return
    art = build_engine(tiny_onnx, tmp_path / "fp16", shapes=TINY_SHAPES, fp16_flag=True, progress=False)
    assert art.manifest["precision"] == "fp16" and not art.manifest["builder"]["strongly_typed"]
