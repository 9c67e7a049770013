"""Image data: ImageFolder directories, tables with an image column, the project's sample images."""

import json

import pytest

from evaluation.data import BUILTIN, data_for_task, load_texts
from evaluation.images import SAMPLE_IMAGES, ImageDataset, load_images
from runtimes.errors import UsageError


def _png(path, colour=(200, 30, 30)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 10), colour).save(path)
    return path


def test_sample_images_are_small_pngs_without_labels():
    ds = load_images(None)
    assert len(ds) == 12 and ds.labels is None and ds.source == BUILTIN
    assert all(p.suffix == ".png" and p.parent == SAMPLE_IMAGES and p.stat().st_size < 4096 for p in ds.paths)
    assert [im.size for im in ds.take(2).images()] == [(48, 48), (48, 48)]
    assert ds.fingerprint() == load_images(None).fingerprint()


def test_folder_labels_come_from_sub_folders(tmp_path):
    _png(tmp_path / "d" / "calm" / "a.png")
    _png(tmp_path / "d" / "busy" / "b.jpg")
    ds = load_images(tmp_path / "d")
    assert ds.labels == ("busy", "calm") and [p.name for p in ds.paths] == ["b.jpg", "a.png"]
    assert [len(b) for b in ds.take(3).batches(2)] == [2, 1]


def test_table_paths_are_relative_to_the_table_and_labels_optional(tmp_path):
    _png(tmp_path / "img" / "x.png")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image": "img/x.png", "label": "odd"}) + "\n")
    ds = load_images(tmp_path / "rows.jsonl")
    assert ds.labels == ("odd",) and ds.paths[0] == tmp_path / "img" / "x.png"
    (tmp_path / "rows.csv").write_text("image\nimg/x.png\nimg/x.png\n")
    assert len(load_images(tmp_path / "rows.csv")) == 2 and load_images(tmp_path / "rows.csv").labels is None


def test_load_texts_hands_image_data_to_the_image_loader(tmp_path):
    _png(tmp_path / "d" / "a.png")
    (tmp_path / "rows.csv").write_text("image,label\nd/a.png,calm\n")
    assert isinstance(load_texts(tmp_path / "d"), ImageDataset)
    assert isinstance(load_texts(tmp_path / "rows.csv"), ImageDataset)


@pytest.mark.parametrize("make, words", [
    (lambda d: d / "missing", "image data not found"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "no image files"),
    (lambda d: (d / "bad.png").write_text("not a png") and d, "not a readable image"),
    (lambda d: (d / "notes.txt").write_text("x") and d, "not an image file"),
    (lambda d: (d / "t.jsonl").write_text('{"image": "nope.png"}\n') and d / "t.jsonl", "image file not found"),
    (lambda d: (_png(d / "a" / "x.png"), _png(d / "y.png")) and d, "only in sub-folders"),
])
def test_bad_image_data_is_one_line(tmp_path, make, words):
    with pytest.raises(UsageError, match=words) as e:
        load_images(make(tmp_path))
    assert "\n" not in str(e.value)


def test_image_tasks_take_the_sample_images_for_the_sample_sentences(tmp_path):
    assert isinstance(data_for_task(load_texts(None), "image-classification"), ImageDataset)
    assert data_for_task(None, "feature-extraction").source == BUILTIN
    (tmp_path / "t.txt").write_text("a text\n")
    with pytest.raises(UsageError, match="takes images"):
        data_for_task(load_texts(tmp_path / "t.txt"), "image-classification")
    with pytest.raises(UsageError, match="takes texts"):
        data_for_task(load_images(None), "text-classification")
