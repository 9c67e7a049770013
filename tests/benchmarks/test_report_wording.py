"""`inspect`'s text (an LLM's sixty cache inputs as two lines) and other report wording."""

import json

import pytest

from benchmarks.gates import load_baseline
from benchmarks.inspect_env import numbered_families
from runtimes.errors import UsageError


def test_numbered_families_fold_one_index_with_one_type():
    specs = ["input_ids: int64[b,s]", "past.0.key: float32[b,3,p,64]", "past.0.value: float32[b,3,p,64]",
             "past.1.key: float32[b,3,p,64]", "past.1.value: float32[b,3,p,64]", "past.2.key: float32[b,3,p,64]",
             "past.2.value: float32[b,3,p,64]", "x.3.y: float32[1]", "x.5.y: float32[1]", "h.0.w: float32[1]",
             "h.1.w: float16[1]"]
    assert numbered_families(specs) == [
        "input_ids: int64[b,s]", "past.{0..2}.key: float32[b,3,p,64]", "past.{0..2}.value: float32[b,3,p,64]",
        "x.{3,5}.y: float32[1]", "h.0.w: float32[1]", "h.1.w: float16[1]"]  # another type is another line


def test_an_llm_compare_report_as_baseline_is_named_as_such(tmp_path):
    """Both LLM reports have kind "llm"; a compare report given as --baseline says what it is."""
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 1, "kind": "llm", "candidates": []}))
    with pytest.raises(UsageError, match="an LLM compare report, not a bench report"):
        load_baseline(tmp_path)
