"""finetune and compress from the command line: outputs, exit codes and one-line errors."""

import json

import pytest

from enginewright.cli import main
from tests.cli.test_cli import one_line_error, run
from tests.conftest import LABELS, write_splits


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = write_splits(tmp_path_factory.mktemp("tdata"))
    (d / "eval_unseen.jsonl").write_text(json.dumps({"text": "hello", "label": "sports"}) + "\n")
    (d / "train_gap.jsonl").write_text(json.dumps({"text": "a", "label": "calm"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    return d


def test_finetune_then_compress(capsys, tiny_bert, data, tmp_path):
    common = ["--train", str(data / "train.jsonl"), "--eval", str(data / "eval.jsonl"), "-q", "--batch-size", "8",
              "--max-length", "32", "--epochs", "1"]
    code, out, _ = run(capsys, "finetune", str(tiny_bert), "-o", str(tmp_path / "ft"), *common)
    assert code == 0 and "macro avg" in out and "accuracy" in out
    code, out, _ = run(capsys, "compress", str(tmp_path / "ft"), "-o", str(tmp_path / "small"), *common,
                       "--prune-heads", "0.5", "--prune-ffn", "0.5", "--distill")
    assert code == 0 and "fewer" in out
    manifest = json.loads((tmp_path / "small" / "manifest.json").read_text())
    assert [c["technique"] for c in manifest["compression"]] == ["structured_pruning", "distillation"]
    assert manifest["command"].startswith("enginewright compress")


def test_bad_training_input_exits_2_and_writes_nothing(capsys, tiny_bert, tiny_classifier, data, tmp_path):
    t, e = str(data / "train.jsonl"), str(data / "eval.jsonl")
    cases = [
        (["finetune", str(tiny_bert), "--train", str(data / "train_gap.jsonl"), "--eval", e], "row 2 has no label"),
        (["finetune", str(tiny_bert), "--train", t, "--eval", str(data / "eval_unseen.jsonl")], "do not occur in the training data"),
        (["finetune", str(tmp_path), "--train", t, "--eval", e], "not a model directory"),
        (["compress", str(tiny_classifier), "--train", t, "--eval", e, "--prune-heads", "1.2"], "must be within (0, 1)"),
        (["compress", str(tiny_classifier), "--train", t, "--eval", e, "--prune-ffn", "0"], "must be within (0, 1)"),
        (["compress", str(tiny_classifier), "--train", t, "--eval", e], "compress needs a technique"),
        (["compress", str(tiny_bert), "--train", t, "--eval", e, "--prune-heads", "0.5"], "run enginewright finetune first"),
        (["compress", str(tiny_classifier), "--train", t, "--eval", e, "--qat-float-layers", "2", "--distill"], "--qat-float-layers needs --qat"),
        (["compress", str(tiny_classifier), "--train", t, "--eval", e, "--qat", "--qat-float-layers", "-1"], "float layers must be >= 0"),
        (["compress", str(tiny_classifier), "--train", t, "--eval", e, "--qat", "--qat-float-layers", "12"], "leaves nothing to quantize"),
        (["compress", str(tiny_classifier), "--train", t, "--eval", e, "--qat-float-attention", "1", "--distill"], "--qat-float-attention needs --qat"),
        (["compress", str(tiny_classifier), "--train", t, "--eval", e, "--qat", "--qat-float-attention", "1"], "need the attention MatMuls quantized"),
    ]
    for argv, words in cases:
        code, _, err = run(capsys, *argv, "-o", str(tmp_path / "out"), "-q")
        assert code == 2, (argv, err)
        one_line_error(err, words)
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.ckpt").exists()


def test_teacher_with_another_label_set(capsys, tiny_classifier, data, tmp_path):
    from tests.conftest import make_tiny_bert

    teacher = make_tiny_bert(tmp_path / "teacher", task="text-classification", num_labels=2)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": f"x {i}", "label": LABELS[i % 3]}) + "\n" for i in range(6)))
    code, _, err = run(capsys, "compress", str(tiny_classifier), "--train", str(tmp_path / "t.jsonl"), "--eval",
                       str(tmp_path / "t.jsonl"), "--distill", "--teacher", str(teacher), "-o", str(tmp_path / "out"), "-q")
    assert code == 2
    one_line_error(err, "teacher's labels")
    assert not (tmp_path / "out").exists()


def test_help_of_training_commands():
    for cmd in ("finetune", "compress"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
