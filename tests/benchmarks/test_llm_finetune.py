"""The LoRA benchmark's data and scoring (the run itself needs SmolLM2 and is a script, not a test)."""

import json

from benchmarks.llm_finetune import QUESTION, first_label, score, write_pairs
from runtimes.tasks import get_task


def test_pairs_fit_the_length_and_do_not_overlap(tiny_llama, tmp_path):
    tok = get_task("text-generation").load_processor(tiny_llama)
    src = tmp_path / "quotes.jsonl"
    rows = [{"text": f"short {i}", "label": "love"} for i in range(6)] + [{"text": "long " * 200, "label": "kids"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    used = write_pairs(src, tmp_path / "a.jsonl", 3, tok, 128, seed=0)
    write_pairs(src, tmp_path / "b.jsonl", 3, tok, 128, seed=0, skip=used)
    a, b = ([json.loads(x) for x in (tmp_path / n).read_text().splitlines()] for n in ("a.jsonl", "b.jsonl"))
    assert len(a) == len(b) == 3 and not {p["prompt"] for p in a} & {p["prompt"] for p in b}
    assert all(p["prompt"].startswith(QUESTION) and p["response"] == "love" for p in a + b)  # the long one never fits


def test_scores():
    assert first_label("I think it is love, or kids") == "love" and first_label("no idea") is None
    s = score(["love", "The topic is wisdom.", "kids"], ["love", "wisdom", "sports"])
    assert s["exact"]["accuracy"] == 1 / 3 and s["names_label"]["accuracy"] == 2 / 3
