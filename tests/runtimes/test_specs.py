import numpy as np
import pytest

from runtimes.errors import UsageError
from runtimes.specs import TensorSpec, validate_feeds

SPECS = [TensorSpec("input_ids", "int64", ("batch_size", "sequence_length")),
         TensorSpec("attention_mask", "int64", ("batch_size", "sequence_length"))]


def feeds(**over):
    f = {"input_ids": np.ones((2, 5), np.int64), "attention_mask": np.ones((2, 5), np.int64)}
    f.update(over)
    return {k: v for k, v in f.items() if v is not None}


def test_valid_feeds_pass():
    validate_feeds(feeds(), SPECS, "m")


@pytest.mark.parametrize("bad, words", [
    (dict(attention_mask=None), ["missing ['attention_mask']", "attention_mask: int64[batch_size,sequence_length]"]),
    (dict(token_type_ids=np.zeros((2, 5), np.int64)), ["unexpected ['token_type_ids']"]),
    (dict(input_ids=np.ones((2, 5), np.int32)), ["'input_ids' has dtype int32", "int64[batch_size,sequence_length]"]),
    (dict(input_ids=np.ones((2, 5, 1), np.int64)), ["'input_ids' has rank 3"]),
])
def test_bad_feeds_name_the_expected_spec(bad, words):
    with pytest.raises(UsageError) as e:
        validate_feeds(feeds(**bad), SPECS, "model @ onnxruntime:cpu")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("model @ onnxruntime:cpu")
    for w in words:
        assert w in msg


def test_fixed_dims_are_checked():
    specs = [TensorSpec("x", "float32", ("batch_size", 4))]
    validate_feeds({"x": np.zeros((3, 4), np.float32)}, specs, "m")
    with pytest.raises(UsageError, match="size 5 on axis 1"):
        validate_feeds({"x": np.zeros((3, 5), np.float32)}, specs, "m")


def test_spec_round_trip():
    s = TensorSpec("logits", "float32", ("batch_size", 3))
    assert TensorSpec.from_dict(s.to_dict()) == s
