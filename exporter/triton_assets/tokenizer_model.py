"""Triton Python-backend model: texts in, the encoder's token inputs out (written by enginewright).

Input ``TEXT`` (TYPE_STRING, one string per request row); outputs named after the model's inputs
(``input_ids``, ``attention_mask``, ``token_type_ids`` as the model takes them), INT64, padded to a
fixed ``max_length`` so that Triton's dynamic batcher can batch requests of any text length.
Settings come from ``settings.json`` beside this file; the tokenizer from ``tokenizer/``.
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def load_settings(here: Path = HERE) -> dict:
    return json.loads((here / "settings.json").read_text(encoding="utf-8"))


def encode(tokenizer, texts, input_names, max_length: int) -> dict:
    """Token arrays for ``texts``: every name in ``input_names``, int64 ``[len(texts), max_length]``."""
    enc = tokenizer([str(t) for t in texts], padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="np")
    shape = enc["input_ids"].shape
    return {n: np.asarray(enc[n], dtype=np.int64) if n in enc else np.zeros(shape, dtype=np.int64) for n in input_names}


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        self.settings = load_settings()
        self.tokenizer = AutoTokenizer.from_pretrained(str(HERE / "tokenizer"), local_files_only=True)

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw]
            arrays = encode(self.tokenizer, texts, self.settings["input_names"], self.settings["max_length"])
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in arrays.items()]))
        return responses
