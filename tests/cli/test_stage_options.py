"""The command line and the pipeline cannot drift: a stage takes every option of its command
(less the command's NOT_IN_PIPELINE), with the same meaning, and runs the command's own code."""

import json

import pytest
import yaml

from enginewright.cli import build_parser
from enginewright.commands import COMMANDS, STAGES
from enginewright.commands._args import ValueType
from enginewright.commands._stage import cli_options, parser_of, stage_options
from tests.cli.test_cli import one_line_error, run


# strings a command checks beyond their type (its check()); every other sample comes from the action
CHECKED_STRINGS = {"--fail-on": "accuracy"}


def _sample(action, path: str):
    """(command-line tokens, YAML value) of one option, the same value, not the default."""
    flag = action.option_strings[-1]
    if flag in CHECKED_STRINGS:
        return [flag, CHECKED_STRINGS[flag]], CHECKED_STRINGS[flag]
    if action.nargs == 0:
        return [flag], True
    if action.choices is not None:
        choice = next(c for c in action.choices if c != action.default)
        return [flag, choice], choice
    if isinstance(action.type, ValueType):
        text, value = action.type.example
        return [flag, text], value
    if action.type is int:
        return [flag, "7"], 7
    if action.type is float:
        return [flag, "0.25"], 0.25
    return [flag, path], path  # strings and paths: an existing file, so data options check out too


def _positionals(command) -> list[str]:
    return ["in" for a in parser_of(command)._actions if not a.option_strings]


def test_every_option_of_a_stage_means_the_same_in_a_pipeline(tmp_path):
    from enginewright.pipeline import load_pipeline

    data = (tmp_path / "texts.txt").resolve()
    data.write_text("hello\n")
    argvs, stages, skip = {}, [], {}
    for name, command in STAGES.items():
        argv, options = [name, *_positionals(command), "-o", str(tmp_path / "out")], {}
        for opt, action in stage_options(command).items():
            tokens, value = _sample(action, str(data))
            argv += tokens
            options[opt] = value
        argvs[name] = argv
        stages.append({name: options})
        skip[name] = {a.dest for a in parser_of(command)._actions if not a.option_strings}
        skip[name] |= {cli_options(command)[k].dest for k in command.NOT_IN_PIPELINE}
    pipe = tmp_path / "all.yaml"
    (tmp_path / "model.gguf").write_bytes(b"")  # import-gguf, the first stage, reads a GGUF model
    pipe.write_text(yaml.safe_dump({"model": str(tmp_path / "model.gguf"), "stages": stages}))
    loaded = load_pipeline(pipe)
    assert [s.name for s in loaded.stages] == list(STAGES)
    for stage in loaded.stages:
        cli = vars(build_parser().parse_args(argvs[stage.name]))
        defaults = {a.dest: a.default for a in parser_of(STAGES[stage.name])._actions}
        for dest, value in stage.values.items():
            if dest in skip[stage.name]:
                continue
            assert value == cli[dest], (stage.name, dest, value, cli[dest])
            assert value != defaults.get(dest), (stage.name, dest)  # the sample was not the default


def test_exclusions_name_real_options_and_are_refused_by_the_pipeline(capsys, tiny_bert, tmp_path):
    for command in COMMANDS:
        if command.STAGE is None:
            continue
        assert set(command.NOT_IN_PIPELINE) <= set(cli_options(command)), command.NAME
        assert {"output", "force", "quiet"} <= set(command.NOT_IN_PIPELINE), command.NAME
    p = tmp_path / "pipe.yaml"
    p.write_text(f"model: {tiny_bert}\nstages:\n  - export: {{output: elsewhere}}\n")
    code, _, err = run(capsys, "run", str(p))
    assert code == 2
    one_line_error(err, "pipe.yaml:3: unknown option 'output' for export")


def test_options_only_the_cli_had_are_read_by_the_pipeline(tmp_path, tiny_bert):
    from enginewright.pipeline import load_pipeline

    teacher = tmp_path / "teacher"
    p = tmp_path / "pipe.yaml"
    p.write_text(f"""model: {tiny_bert}
stages:
  - compress: {{train: builtin:samples, eval: builtin:samples, qat: true, qat_percentile: 99.9, distill: true,
                hidden_loss: 0.5, teacher: teacher, epochs: 1}}
  - export: {{}}
  - quantize: {{mode: dynamic, exclude: "a,b"}}
  - compare: {{min_top1: 0.9, atol: {{logits: 0.5}}, provider_option: {{cpu: {{arena_extend_strategy: kSameAsRequested}}}}}}
  - bench: {{batch: [1, 2], max_regression: 10%, on: [onnxruntime:cpu]}}
""")
    compress, export, quantize, compare, bench = (s.values for s in load_pipeline(p).stages)
    assert compress["qat_percentile"] == 99.9 and compress["hidden_loss"] == 0.5 and compress["teacher"] == teacher
    assert compress["epochs"] == 1 and compress["lr"] == 5e-5 and export["atol"] == 1e-4  # the command's defaults
    assert quantize["exclude"] == "a,b" and compare["min_top1"] == [(None, 0.9)] and compare["atol"] == [("logits", 0.5)]
    assert compare["provider_option"] == [("cpu", "arena_extend_strategy", "kSameAsRequested")]
    assert bench["batch"] == (1, 2) and bench["max_regression"] == 0.1 and bench["runtimes"] == ["onnxruntime:cpu"]


@pytest.mark.parametrize("stage, words", [
    ("compress: {eval: builtin:samples, distill: true}", "pipe.yaml:3: compress needs train"),
    ("compress: {train: t.txt, eval: t.txt, qat_dropout: true}", "pipe.yaml:3: compress: --qat-dropout needs --qat"),
    ("compare: {fail_on: speed}", "pipe.yaml:3: compare: --fail-on 'speed'"),
    ("bench: {batch: [1, 0]}", "pipe.yaml:3: bench.batch: --batch takes positive integers"),
    ("export: {task: translation}", "pipe.yaml:3: export.task must be one of feature-extraction"),
    ("build: {shapes: [1, 2]}", "pipe.yaml:3: build.shapes: takes {NAME: [MIN, OPT, MAX]}"),
])
def test_a_bad_option_value_names_file_and_line(capsys, tiny_bert, tmp_path, stage, words):
    (tmp_path / "t.txt").write_text("hello\n")
    (tmp_path / "pipe.yaml").write_text(f"model: {tiny_bert}\nstages:\n  - {stage}\n")
    code, _, err = run(capsys, "run", str(tmp_path / "pipe.yaml"))
    assert code == 2, err
    one_line_error(err, words)


@pytest.fixture
def captured_compress(monkeypatch):
    import exporter.compress
    from runtimes.errors import UsageError

    seen = []

    def fake(artifact, out, techniques, **kw):
        seen.append(techniques)
        raise UsageError("stopped before training")

    monkeypatch.setattr(exporter.compress, "compress", fake)
    return seen


def test_the_compress_seed_reaches_random_pruning_from_cli_and_pipeline(capsys, captured_compress, tiny_classifier,
                                                                        splits, tmp_path):
    from exporter.compress import PruneConfig

    t, e = str(splits / "train.jsonl"), str(splits / "eval.jsonl")
    code, _, err = run(capsys, "compress", str(tiny_classifier), "--train", t, "--eval", e, "--prune-heads", "0.5",
                       "--importance", "random", "--seed", "5", "-o", str(tmp_path / "out"), "-q")
    assert code == 2 and "stopped before training" in err
    p = tmp_path / "pipe.yaml"
    p.write_text(f"model: {tiny_classifier}\nstages:\n  - compress: {{train: {t}, eval: {e}, prune_heads: 0.5, "
                 "importance: random, seed: 5}\n")
    code, _, err = run(capsys, "run", str(p), "-q")
    assert code == 2 and "stopped before training" in err
    cli, pipeline = ([c for c in techniques if isinstance(c, PruneConfig)] for techniques in captured_compress)
    assert cli == pipeline and cli[0].seed == 5 and cli[0].importance == "random"


def test_export_takes_a_model_dir_or_a_module(capsys, monkeypatch, tiny_bert, tmp_path):
    import exporter.factory

    out = str(tmp_path / "o")
    for argv, words in ((["export", "-o", out], "needs MODEL_DIR or --module"),
                        (["export", str(tiny_bert), "--module", "pkg.mod:make", "-o", out], "not both"),
                        (["export", str(tiny_bert), "--inputs", "x:batch_size,16:float32", "-o", out], "--inputs goes with --module")):
        code, _, err = run(capsys, *argv)
        assert code == 2, err
        one_line_error(err, words)
    calls = []

    class Art:
        model_file = tmp_path / "o" / "model.onnx"
        manifest = {}
        task = "module"

    def export_factory(factory, inputs, out, *, force=False, opset=None, dynamo=True, **checks):
        calls.append((factory, list(inputs), str(out), force, opset))
        return Art()

    monkeypatch.setattr(exporter.factory, "export_factory", export_factory)
    code, stdout, _ = run(capsys, "export", "--module", "pkg.mod:make", "--inputs", "x:batch_size,16:float32",
                          "--inputs", "y:batch_size:int64", "--opset", "18", "-o", out, "--force")
    assert code == 0 and "exported pkg.mod:make" in stdout
    assert calls == [("pkg.mod:make", ["x:batch_size,16:float32", "y:batch_size:int64"], out, True, 18)]


def test_summary_of_a_stage_run_matches_the_cli_parse(tmp_path):
    """The JSON-able options a stage hashes for its cache are the file's, not the filled-in defaults."""
    from enginewright.pipeline import load_pipeline

    p = tmp_path / "pipe.yaml"
    p.write_text(f"model: {tmp_path}\nstages:\n  - quantize: {{mode: dynamic}}\n")
    stage = load_pipeline(p).stages[0]
    assert stage.options == {"mode": "dynamic"} and stage.values["calib_rows"] == 128
    json.dumps(stage.options)
