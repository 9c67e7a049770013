"""Tasks: a plain tuple asked by name, architecture suffixes, feeds, masks and default profiles."""

import numpy as np
import pytest

from runtimes.artifact import TASKS, task_from_config
from runtimes.errors import UsageError
from runtimes.specs import TensorSpec
from runtimes.tasks import TASKS as TASK_OBJECTS, Task, get_task, processor_files, task_names


def test_tasks_are_a_plain_tuple_and_the_artifact_names_come_from_it():
    assert isinstance(TASK_OBJECTS, tuple) and all(isinstance(t, Task) for t in TASK_OBJECTS)
    assert TASKS == task_names() == ("feature-extraction", "text-classification", "token-classification",
                                     "image-classification", "text-generation", "module")
    assert get_task(None).name == "feature-extraction"
    assert get_task(get_task("module")) is get_task("module")


def test_unknown_task_is_one_line_listing_the_names():
    with pytest.raises(UsageError, match="unknown task 'speech'.*image-classification"):
        get_task("speech")


@pytest.mark.parametrize("arch, task", [
    ("BertModel", "feature-extraction"), ("BertForSequenceClassification", "text-classification"),
    ("BertForTokenClassification", "token-classification"), ("ViTForImageClassification", "image-classification"),
    ("ViTModel", "feature-extraction"), ("Wav2Vec2ForCTC", None),
])
def test_task_from_config_takes_the_longest_suffix(arch, task):
    assert task_from_config({"architectures": [arch]}) == task


def test_processor_files_cover_tokenizers_and_image_processors():
    files = processor_files()
    assert files[:2] == ("tokenizer.json", "tokenizer_config.json") and "preprocessor_config.json" in files
    assert len(files) == len(set(files))


def test_text_mask_and_token_counts_come_from_the_attention_mask():
    text = get_task("text-classification")
    feeds = {"input_ids": np.ones((2, 4), np.int64), "attention_mask": np.array([[1, 1, 0, 0], [1, 1, 1, 0]])}
    assert text.mask(feeds) is feeds["attention_mask"]
    assert text.token_counts(feeds) == (8, 5)


def test_image_task_has_no_mask_and_counts_images():
    image = get_task("image-classification")
    feeds = {"pixel_values": np.zeros((3, 3, 32, 32), np.float32)}
    assert image.mask(feeds) is None and image.token_counts(feeds) == (3, 3)
    with pytest.raises(UsageError, match="'input_ids' is not produced by the image processor"):
        image.feeds_for(feeds, [TensorSpec("input_ids", "int64", ("batch_size", "sequence_length"))], "m")


def test_image_profile_fixes_channels_and_size_from_the_config(tmp_path):
    (tmp_path / "config.json").write_text('{"image_size": 48, "num_channels": 1}')
    dims = get_task("image-classification").profile_dims(tmp_path, (1, 4, 8), (1, 128, 512))
    assert dims == {"batch_size": (1, 4, 8), "num_channels": (1, 1, 1), "height": (48, 48, 48), "width": (48, 48, 48)}
    assert get_task("feature-extraction").profile_dims(tmp_path, (1, 4, 8), (1, 2, 3)) == {
        "batch_size": (1, 4, 8), "sequence_length": (1, 2, 3)}


def test_missing_image_processor_is_one_line(tmp_path):
    with pytest.raises(UsageError, match="no usable image processor.*preprocessor_config.json"):
        get_task("image-classification").load_processor(tmp_path)


def test_only_text_tasks_pad_their_batches():
    assert [t.name for t in TASK_OBJECTS if t.is_padded] == ["feature-extraction", "text-classification",
                                                             "token-classification", "text-generation"]
