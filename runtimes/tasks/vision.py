"""Image classifiers (ViT-style): image-processor feeds, one row of logits per image, batch-only profiles."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtimes.specs import TensorSpec
from runtimes.tasks.base import BATCH_DIM, Task

PIXELS = "pixel_values"
PIXEL_DIMS = (BATCH_DIM, "num_channels", "height", "width")  # as optimum's vision exports name them


@dataclass(frozen=True)
class ImageClassificationTask(Task):
    family: str = "vision-encoder"
    modality: str = "image"
    model_inputs: tuple[str, ...] = (PIXELS,)
    layer_pattern: str | None = "encoder.layer"
    processor_files: tuple[str, ...] = ("preprocessor_config.json",)
    processor_name: str = "image processor"
    scores_labels: bool = True

    def input_specs(self, model) -> list[TensorSpec]:
        return [TensorSpec(PIXELS, "float32", PIXEL_DIMS)]

    def output_specs(self, config) -> list[TensorSpec]:
        return [TensorSpec("logits", "float32", (BATCH_DIM, config.num_labels))]

    def load_processor(self, model_dir: str | Path):
        return self._pretrained("AutoImageProcessor", model_dir, "copy preprocessor_config.json into it")

    def encode(self, processor, batch, *, max_length: int = 128, pad_to_max: bool = False) -> dict[str, np.ndarray]:
        """Resize and normalize ``batch.images()`` (RGB PIL images) to float32 ``pixel_values``."""
        enc = processor(images=batch.images(), return_tensors="np")
        return {PIXELS: np.ascontiguousarray(enc[PIXELS], dtype=np.float32)}

    def profile_dims(self, model_dir, batches, seqs) -> dict[str, tuple]:
        """Batch from ``batches``; channels, height and width fixed at the model's image size
        (``config.json``'s ``image_size`` and ``num_channels``)."""
        f = Path(model_dir) / "config.json"
        config = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
        size, channels = int(config.get("image_size", 224)), int(config.get("num_channels", 3))
        return {BATCH_DIM: tuple(batches), "num_channels": (channels,) * 3, "height": (size,) * 3, "width": (size,) * 3}


IMAGE_CLASSIFICATION = ImageClassificationTask(
    "image-classification", auto_class="AutoModelForImageClassification", optimum_task="image-classification",
    arch_suffixes=("ForImageClassification",))
