"""What the compression tests share: a tiny fine-tuned classifier and the recovery settings."""

from pathlib import Path

import pytest

from exporter.finetune import finetune
from exporter.training import TrainConfig
from tests.conftest import make_tiny_bert

RECOVER = TrainConfig(epochs=1, batch_size=8, max_length=32)


@pytest.fixture(scope="session")
def classifier(tmp_path_factory, splits) -> Path:
    """A tiny BERT fine-tuned by the project's own finetune (hidden 32, FFN 40 so 2:4 applies everywhere)."""
    d = tmp_path_factory.mktemp("cls")
    src = make_tiny_bert(d / "base", intermediate_size=40)
    return finetune(src, d / "ft", train_data=splits / "train.jsonl", eval_data=splits / "eval.jsonl",
                    config=TrainConfig(epochs=1, batch_size=8, max_length=32), progress=False).path


def dq_feeding(m, name: str):
    """The DequantizeLinear node that produces ``name`` in graph ``m``, through any Transpose or
    Reshape in between, or None."""
    producer = {o: n for n in m.graph.node for o in n.output}
    node = producer.get(name)
    while node is not None and node.op_type in ("Transpose", "Reshape"):
        node = producer.get(node.input[0])
    return node if node is not None and node.op_type == "DequantizeLinear" else None


def compress_kw(splits) -> dict:
    return dict(train_data=splits / "train.jsonl", eval_data=splits / "eval.jsonl", recovery=RECOVER, progress=False)
