import numpy as np
import pytest

from evaluation.metrics import accuracy, label_ids, macro_f1
from evaluation.parity import RowCollector, Tolerance, compare_collected, is_token_level
from runtimes.errors import UsageError
from runtimes.specs import TensorSpec

HIDDEN = TensorSpec("last_hidden_state", "float32", ("batch_size", "sequence_length", 4))
LOGITS = TensorSpec("logits", "float32", ("batch_size", 3))


def _mask():
    m = np.ones((2, 5), np.int64)
    m[0, 3:] = 0
    return m


def _compare(ref, cand, specs, mask, **tol):
    r, c = RowCollector(specs), RowCollector(specs)
    r.add(ref, mask)
    c.add(cand, mask)
    return compare_collected("ref", "cand", r, c, default=Tolerance(**tol))


def test_padded_positions_do_not_count():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 5, 4)).astype(np.float32)
    cand = ref.copy()
    cand[0, 3:] += 100.0  # garbage where attention_mask is 0
    res = _compare({"last_hidden_state": ref}, {"last_hidden_state": cand}, [HIDDEN], _mask())
    assert res, str(res)
    out = res.outputs[0]
    assert out.token_level and out.rows == 8 and out.max_abs == 0.0
    assert res.padded_positions_excluded == 2


def test_errors_at_real_positions_fail_with_reasons():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 5, 4)).astype(np.float32)
    cand = ref.copy()
    cand[1, 2, 0] += 0.01
    res = _compare({"last_hidden_state": ref}, {"last_hidden_state": cand}, [HIDDEN], _mask())
    assert not res
    assert "1 of 32 values beyond atol" in str(res) and "FAIL" in str(res)
    assert res.outputs[0].max_abs == pytest.approx(0.01, rel=1e-3)
    loose = _compare({"last_hidden_state": ref}, {"last_hidden_state": cand}, [HIDDEN], _mask(), atol=0.02, min_cosine=0.99)
    assert loose


def test_cosine_catches_a_scaled_output_only_when_asked():
    ref = np.random.default_rng(1).normal(size=(2, 5, 4)).astype(np.float32)
    flipped = ref.copy()
    flipped[0, 0] *= -1
    res = _compare({"last_hidden_state": ref}, {"last_hidden_state": flipped}, [HIDDEN], _mask(), atol=10, rtol=10)
    assert not res and "min cosine" in str(res)
    assert res.outputs[0].cos_min == pytest.approx(-1.0)


def test_logits_top1_and_token_level_detection():
    ref = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]], np.float32)
    cand = np.array([[2.1, 2.0, 0.0], [3.0, 0.0, 0.0]], np.float32)
    mask = np.ones((2, 3), np.int64)  # same shape as the logits by chance
    assert not is_token_level(LOGITS, ref, mask)
    res = _compare({"logits": ref}, {"logits": cand}, [LOGITS], mask, atol=2, rtol=0, min_cosine=0.5, min_top1=0.9)
    assert res.outputs[0].top1 == 0.5 and not res and "top-1 agreement 0.5000 < 0.9" in str(res)


def test_missing_output_and_nan_fail():
    ref = np.ones((2, 3), np.float32)
    res = _compare({"logits": ref}, {"other": ref}, [LOGITS], None)
    assert not res and res.missing == ["logits"]
    nan = ref.copy()
    nan[0, 0] = np.nan
    res = _compare({"logits": ref}, {"logits": nan}, [LOGITS], None)
    assert not res and "NaN" in str(res)


@pytest.mark.parametrize("kw", [dict(atol=-1), dict(rtol=float("nan")), dict(min_cosine=2), dict(min_top1=1.5),
                                dict(min_pooled_cosine=-2)])
def test_tolerance_validates_itself(kw):
    with pytest.raises(UsageError):
        Tolerance(**kw)


def test_task_metrics_by_hand():
    gold = np.array([0, 0, 1, 2])
    pred = np.array([0, 1, 1, 2])
    assert accuracy(pred, gold) == 0.75
    # class 0: tp1 fn1 -> 2/3; class 1: tp1 fp1 -> 2/3; class 2: 1
    assert macro_f1(pred, gold, 3) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_label_mapping():
    assert list(label_ids(["b", "a"], {"a": 0, "b": 1}, 2, "d")) == [1, 0]
    assert list(label_ids([1, "0"], {}, 2, "d")) == [1, 0]
    with pytest.raises(UsageError, match="row 2 label 'zzz' is not one of the model's labels \\(a, b\\)"):
        label_ids(["a", "zzz"], {"a": 0, "b": 1}, 2, "d")


def test_pooled_cosine_of_token_outputs_ignores_padding():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(2, 5, 4)).astype(np.float32)
    cand = ref.copy()
    cand[0, 3:] = 1e6  # padding garbage must not reach the pooled vectors
    res = _compare({"last_hidden_state": ref}, {"last_hidden_state": cand}, [HIDDEN], _mask())
    assert res.outputs[0].pooled_cos_mean == pytest.approx(1.0)
    cand[1, 0] *= -1
    res = _compare({"last_hidden_state": ref}, {"last_hidden_state": cand}, [HIDDEN], _mask(), atol=1e9, min_cosine=-1)
    assert res.outputs[0].pooled_cos_mean < 1.0


def test_pooled_cosine_gate():
    """The sentence-embedding gate: token rows may disagree more than the pooled vectors do, and
    the gate fails only on the pooled ones."""
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(2, 5, 4)).astype(np.float32)
    cand = ref.copy()
    cand[1, 0] *= -1  # one token flipped: row cosine -1, pooled cosine of text 1 well below 1
    loose = dict(atol=1e9, min_cosine=-1)
    pooled = _compare({"last_hidden_state": ref}, {"last_hidden_state": cand}, [HIDDEN], _mask(), **loose)
    assert pooled and pooled.outputs[0].pooled_cos_mean < 0.99
    res = _compare({"last_hidden_state": ref}, {"last_hidden_state": cand}, [HIDDEN], _mask(), **loose,
                   min_pooled_cosine=0.99)
    assert not res and "mean pooled cosine" in str(res) and "< 0.99" in str(res)
    floor = pooled.outputs[0].pooled_cos_mean - 1e-6
    assert _compare({"last_hidden_state": ref}, {"last_hidden_state": cand}, [HIDDEN], _mask(), **loose,
                    min_pooled_cosine=floor)
