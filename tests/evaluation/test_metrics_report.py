import numpy as np
import pytest

from evaluation.metrics import (
    accuracy,
    accuracy_with_ci,
    bio_spans,
    bootstrap_ci,
    classification_report,
    entity_report,
    format_report,
    macro_f1,
)
from runtimes.errors import UsageError

LABELS = ("a", "b", "c", "d")
# gold: a a a a b b c c      class  tp pred gold   P     R     F1 = 2tp/(pred+gold)
# pred: a a a b b c c c      a       3   3    4    1     3/4   6/7
#                            b       1   2    2    1/2   1/2   1/2
#                            c       2   3    2    2/3   1     4/5
#                            d       0   0    0    0     0     0   (never seen: shown, not averaged)
GOLD = np.array([0, 0, 0, 0, 1, 1, 2, 2])
PRED = np.array([0, 0, 0, 1, 1, 2, 2, 2])


def test_classification_report_by_hand():
    rep = classification_report(PRED, GOLD, LABELS)
    expect = {"a": (1, 3 / 4, 6 / 7, 4), "b": (1 / 2, 1 / 2, 1 / 2, 2), "c": (2 / 3, 1, 4 / 5, 2), "d": (0, 0, 0, 0)}
    for name, (p, r, f, s) in expect.items():
        got = rep["classes"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx((p, r, f, s)), name
    assert rep["macro"]["precision"] == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    assert rep["macro"]["recall"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    assert rep["macro"]["f1"] == pytest.approx((6 / 7 + 1 / 2 + 4 / 5) / 3)
    assert rep["macro"]["f1"] == pytest.approx(macro_f1(PRED, GOLD, len(LABELS)))
    assert rep["accuracy"] == 0.75 and rep["rows"] == 8
    assert list(rep["classes"]) == list(LABELS)


def test_micro_f1_equals_accuracy_for_single_label():
    rng = np.random.default_rng(3)
    gold, pred = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    rep = classification_report(pred, gold, list("vwxyz"))
    for k in ("precision", "recall", "f1"):
        assert rep["micro"][k] == pytest.approx(accuracy(pred, gold))


def test_precision_is_zero_for_a_class_never_predicted():
    rep = classification_report(np.array([0, 0]), np.array([0, 1]), ["x", "y"])
    assert rep["classes"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert rep["classes"]["x"]["precision"] == 0.5


def test_empty_input_and_class_named_like_an_average():
    rep = classification_report(np.array([], np.int64), np.array([], np.int64), ["micro", "accuracy"])
    assert rep["rows"] == 0 and rep["accuracy"] == 0.0 and rep["micro"]["f1"] == 0.0
    assert set(rep["classes"]) == {"micro", "accuracy"}


@pytest.mark.parametrize("pred, gold, labels, words", [
    ([0, 3], [0, 1], ["x", "y"], "row 2 prediction id 3 has no name"),
    ([0, 1], [0, -1], ["x", "y"], "row 2 gold label id -1 has no name"),
    ([0, 1], [0, 1], ["x", "x"], "label names repeat"),
])
def test_classification_report_errors(pred, gold, labels, words):
    with pytest.raises(UsageError, match=words):
        classification_report(np.array(pred), np.array(gold), labels)


def test_format_report_is_a_fixed_width_table():
    text = format_report(classification_report(PRED, GOLD, LABELS))
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    row = next(line for line in lines if line.split()[:1] == ["a"])
    assert row.split() == ["a", "1.000", "0.750", "0.857", "4"]
    assert "accuracy" in text and "micro avg" in text and "macro avg" in text
    widths = {len(line) for line in lines if line.strip() and not line.lstrip().startswith("accuracy")}
    assert len(widths) == 1  # every numeric row lines up with the header
    short = format_report(classification_report(PRED, GOLD, LABELS), digits=2)
    assert next(line for line in short.splitlines() if line.split()[:1] == ["a"]).split()[1:4] == ["1.00", "0.75", "0.86"]


@pytest.mark.parametrize("tags, spans", [
    (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),
    (["O", "I-PER", "I-PER", "O"], {("PER", 1, 3)}),  # I after O starts a span (conlleval)
    (["I-PER", "O", "I-PER"], {("PER", 0, 1), ("PER", 2, 3)}),
    (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),  # a type switch ends and starts
    (["B-PER", "B-PER", "I-PER"], {("PER", 0, 1), ("PER", 1, 3)}),
    (["S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"], {("PER", 0, 1), ("LOC", 1, 4), ("LOC", 4, 5)}),
    (["E-PER", "E-PER", "I-PER"], {("PER", 0, 1), ("PER", 1, 2), ("PER", 2, 3)}),
    (["O", "O"], set()),
    ([], set()),
])
def test_bio_spans(tags, spans):
    assert bio_spans(tags) == spans


@pytest.mark.parametrize("tag", ["PER", "X-PER", "B-", "B_PER"])
def test_bio_spans_rejects_tags_without_a_prefix(tag):
    with pytest.raises(UsageError, match=f"token 2: tag '{tag}' is not BIO/IOBES"):
        bio_spans(["O", tag])


def test_entity_report_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "I-ORG", "O"], ["B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "I-ORG", "O", "I-LOC"], ["B-PER"]]
    # gold spans: PER(s1 0-2) LOC(s1 3-4) ORG(s2 0-3) PER(s3 0-1)
    # pred spans: PER(s1 0-2) ORG(s1 3-4) ORG(s2 0-2) LOC(s2 3-4) PER(s3 0-1)
    # type  tp pred gold   P    R    F1
    # LOC    0   1    1    0    0    0
    # ORG    0   2    1    0    0    0     (ORG s2 0-2 is too short: no partial credit)
    # PER    2   2    2    1    1    1
    # micro  2   5    4    2/5  1/2  2*2/(5+4) = 4/9
    rep = entity_report(pred, gold)
    assert list(rep["classes"]) == ["LOC", "ORG", "PER"]
    assert rep["classes"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert rep["classes"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    micro = rep["micro"]
    assert (micro["precision"], micro["recall"], micro["f1"], micro["support"]) == pytest.approx((2 / 5, 1 / 2, 4 / 9, 4))
    assert rep["macro"]["f1"] == pytest.approx(1 / 3) and rep["sentences"] == 3
    assert "PER" in format_report(rep) and "accuracy" not in format_report(rep)


def test_entity_report_counts_types_only_predicted():
    rep = entity_report([["B-MISC", "O"]], [["O", "O"]])
    assert rep["classes"]["MISC"]["support"] == 0 and rep["micro"]["precision"] == 0.0


@pytest.mark.parametrize("pred, gold, words", [
    ([["O"]], [["O"], ["O"]], "1 predicted sentences but 2 gold"),
    ([["O"], ["O"]], [["O"], ["O", "O"]], "sentence 2: 1 predicted tags but 2 gold"),
    ([["O", "PER"]], [["O", "O"]], "sentence 1 predicted token 2: tag 'PER'"),
])
def test_entity_report_errors(pred, gold, words):
    with pytest.raises(UsageError, match=words):
        entity_report(pred, gold)


def test_bootstrap_contains_estimate_and_narrows_with_rows():
    rng = np.random.default_rng(1)
    small, large = rng.random(50) < 0.8, rng.random(5000) < 0.8
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 5  # width shrinks like 1/sqrt(n): 10x here
    assert 0.0 <= lo_s < hi_s <= 1.0


def test_bootstrap_is_deterministic_for_a_seed():
    correct = np.random.default_rng(2).random(300) < 0.6
    assert bootstrap_ci(correct, seed=7) == bootstrap_ci(correct, seed=7)
    assert bootstrap_ci(correct, seed=7) != bootstrap_ci(correct, seed=8)
    narrow = bootstrap_ci(correct, alpha=0.5)
    wide = bootstrap_ci(correct, alpha=0.01)
    assert wide[0] <= narrow[0] and narrow[1] <= wide[1]


def test_bootstrap_matches_row_resampling():
    correct = np.random.default_rng(4).random(400) < 0.7
    rng = np.random.default_rng(0)
    means = correct[rng.integers(0, correct.size, (4000, correct.size))].mean(axis=1)
    ref = np.quantile(means, [0.025, 0.975])
    assert bootstrap_ci(correct, n_boot=4000) == pytest.approx(tuple(ref), abs=0.01)


def test_bootstrap_edges_and_errors():
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)
    assert bootstrap_ci(np.array([])) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0/1"):
        bootstrap_ci(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(np.ones(3), n_boot=0)


def test_accuracy_with_ci():
    res = accuracy_with_ci(PRED, GOLD, seed=1)
    assert res["accuracy"] == 0.75 and res["rows"] == 8
    assert res["ci_low"] <= 0.75 <= res["ci_high"]
    assert set(res) == {"accuracy", "ci_low", "ci_high", "rows"}
    with pytest.raises(ValueError, match="shape"):
        accuracy_with_ci(PRED, GOLD[:3])


def test_the_sign_test():
    from evaluation.metrics import sign_test

    assert sign_test(20, 20) == 0.5 ** 20 and sign_test(0, 20) == 1.0
    assert round(sign_test(16, 20), 4) == 0.0059 and round(sign_test(15, 20), 4) == 0.0207
