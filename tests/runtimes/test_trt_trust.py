"""Untrusted engines: host code (a version-compatible engine's lean runtime, plugin libraries) is refused
unless the user opts in, and an engine whose files changed is not loaded. All decided without TensorRT;
a stand-in module checks what reaches ``tensorrt.Runtime``."""

import json

import pytest

from runtimes.artifact import file_table, load_artifact
from runtimes.errors import UsageError
from runtimes.trt import engine_manifest
from runtimes.trt.engine import INSTALL_HINT, engine_from_bytes, engine_host_code
from runtimes.trt.runner import TensorRTRunner
from tests.cli.test_cli import one_line_error, run
from tests.runtimes.test_trt import HAS_TRT


def _engine_dir(tmp_path, vc=False, plugins=None, plan=b"not really an engine", tokenizer_from=None):
    d = tmp_path / "engine"
    d.mkdir()
    (d / "model.plan").write_bytes(plan)
    if tokenizer_from is not None:
        from exporter.writer import copy_companions

        copy_companions(tokenizer_from, d)
    m = engine_manifest(tensorrt_version="10.8.0.43", gpu={"name": "NVIDIA H100", "compute_capability": "9.0"},
                        profiles=[], precision="fp32", builder_options={}, onnx_sha256="0" * 64, version_compatible=vc,
                        task="feature-extraction")
    if plugins is not None:
        m["tensorrt"]["plugins"] = plugins
    m["files"] = file_table(d)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


@pytest.mark.parametrize("vc, plugins, trust, allowed", [
    (False, None, False, False), (False, None, True, False),  # a plain engine: host code stays refused
    (True, None, True, True), (False, ["libmy_plugin.so"], True, True),
])
def test_host_code_is_allowed_only_for_engines_that_need_it_and_are_trusted(vc, plugins, trust, allowed):
    m = engine_manifest(tensorrt_version="10.8", gpu={"name": "x", "compute_capability": "9.0"}, profiles=[],
                        precision="fp32", builder_options={}, onnx_sha256="0", version_compatible=vc)
    if plugins:
        m["tensorrt"]["plugins"] = plugins
    assert engine_host_code(m, trust, "e") is allowed


@pytest.mark.parametrize("vc, plugins, words", [
    (True, None, "lean runtime"), (False, ["libevil.so"], "plugin libraries libevil.so"),
])
def test_an_engine_with_host_code_is_refused_without_the_flag(vc, plugins, words):
    m = {"tensorrt": {"version_compatible": vc, **({"plugins": plugins} if plugins else {})}}
    with pytest.raises(UsageError, match=f"e: the engine carries host code .*{words}.*--trust-engine-code"):
        engine_host_code(m, False, "e")


@pytest.mark.parametrize("info", [{"version_compatible": "yes"}, {"plugins": "libx.so"}, {"plugins": [3]}, ["x"]])
def test_malformed_trust_fields_are_one_line(info):
    with pytest.raises(UsageError, match="field 'tensorrt'"):
        engine_host_code({"tensorrt": info}, True, "e")


def test_the_runner_refuses_before_it_needs_tensorrt(tmp_path):
    art = load_artifact(_engine_dir(tmp_path, vc=True))
    with pytest.raises(UsageError, match="--trust-engine-code"):
        TensorRTRunner(art).activate()


@pytest.mark.skipif(HAS_TRT, reason="checks how far a trusted engine gets on a machine without TensorRT")
def test_a_trusted_engine_gets_past_the_refusal(tmp_path):
    art = load_artifact(_engine_dir(tmp_path, vc=True))
    with pytest.raises(UsageError, match="TensorRT is not installed"):
        TensorRTRunner(art, trust_engine_code=True).activate()


def test_an_engine_that_changed_since_it_was_built_is_not_loaded(tmp_path):
    d = _engine_dir(tmp_path)
    (d / "model.plan").write_bytes(b"not really an engin3")  # same size
    with pytest.raises(UsageError, match="model.plan: changed .*TensorRT runner"):
        TensorRTRunner(load_artifact(d)).activate()


class _Runtime:
    def __init__(self, logger):
        self.engine_host_code_allowed = "unset"

    def deserialize_cuda_engine(self, data):
        return object()


class _FakeTrt:
    __version__ = "10.8.0.43"
    Runtime = _Runtime

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass


@pytest.mark.parametrize("allowed", [False, True])
def test_the_runtime_is_told_explicitly_whether_host_code_may_load(allowed, tmp_path):
    runtime, _ = engine_from_bytes(_FakeTrt, b"x", path=tmp_path / "model.plan", host_code_allowed=allowed)
    assert runtime.engine_host_code_allowed is allowed


@pytest.mark.skipif(HAS_TRT, reason="without TensorRT the bench stops at the refusal or the install hint")
def test_bench_refuses_a_version_compatible_engine_without_the_flag(capsys, tiny_bert, tmp_path):
    d = _engine_dir(tmp_path, vc=True, tokenizer_from=tiny_bert)
    code, _, err = run(capsys, "bench", str(d), "--batch", "1", "--seq", "8", "--iters", "1")
    assert code == 2
    one_line_error(err, "engine", "--trust-engine-code")
    code, _, err = run(capsys, "bench", str(d), "--batch", "1", "--seq", "8", "--iters", "1", "--trust-engine-code")
    assert code == 2 and INSTALL_HINT.split(":")[0] in err
