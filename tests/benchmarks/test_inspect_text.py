"""``enginewright inspect``'s text: an LLM's sixty cache inputs as two lines."""

from benchmarks.inspect_env import numbered_families


def test_numbered_families_fold_one_index_with_one_type():
    specs = ["input_ids: int64[b,s]", "past.0.key: float32[b,3,p,64]", "past.0.value: float32[b,3,p,64]",
             "past.1.key: float32[b,3,p,64]", "past.1.value: float32[b,3,p,64]", "past.2.key: float32[b,3,p,64]",
             "past.2.value: float32[b,3,p,64]", "x.3.y: float32[1]", "x.5.y: float32[1]", "h.0.w: float32[1]",
             "h.1.w: float16[1]"]
    assert numbered_families(specs) == [
        "input_ids: int64[b,s]", "past.{0..2}.key: float32[b,3,p,64]", "past.{0..2}.value: float32[b,3,p,64]",
        "x.{3,5}.y: float32[1]", "h.0.w: float32[1]", "h.1.w: float16[1]"]  # another type is another line
