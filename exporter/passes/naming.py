"""Give every node a name."""

from __future__ import annotations

from exporter.passes.core import PassResult


def name_unnamed_nodes(model) -> PassResult:
    """Name each unnamed node ``<op_type>_<position>`` (underscores appended until unique), so
    that nodes can be chosen by name (ONNX Runtime's fusions leave some unnamed)."""
    taken = {n.name for n in model.graph.node}
    count = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            count += 1
    return PassResult(model, count > 0, count)
