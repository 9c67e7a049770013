"""The shape every pass has, and the one graph index they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class PassResult:
    """What a pass did: the model (the one it was given, rewritten in place), whether anything
    changed, and how many rewrites it made (0 when ``modified`` is false)."""

    model: Any
    modified: bool
    count: int = 0


Pass = Callable[[Any], PassResult]


def run_passes(passes: Sequence[Pass], model) -> PassResult:
    """Run ``passes`` in order; the result is modified when any pass modified the model, and its
    count is the sum of theirs."""
    modified, count = False, 0
    for p in passes:
        r = p(model)
        model, modified, count = r.model, modified or r.modified, count + r.count
    return PassResult(model, modified, count)


def attr(node, name: str, default=None):
    """The value of ``node``'s attribute ``name``, or ``default`` when it has none."""
    import onnx

    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


class GraphIndex:
    """Name lookups over one graph, built once: producers, consumers, initializers, value infos.

    Built from the graph as it is; a pass that rewrites the graph builds a new index afterwards.
    ``base_dir`` is where external data lives, for reading initializer values.
    """

    def __init__(self, graph, base_dir: str = ""):
        self.graph, self.base_dir = graph, str(base_dir)
        self.initializers = {t.name: t for t in graph.initializer}
        self.producers = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in graph.output}
        self.value_infos = {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}

    def uses(self, name: str) -> int:
        """How many node inputs and graph outputs read ``name``."""
        return len(self.consumers.get(name, ())) + (name in self.graph_outputs)

    def is_used(self, name: str) -> bool:
        return self.uses(name) > 0

    def made_by(self, name: str, op: str):
        """The node of type ``op`` that produces ``name``, else None."""
        node = self.producers.get(name)
        return node if node is not None and node.op_type == op else None

    def source(self, name: str) -> str:
        """``name`` traced back through Identity nodes."""
        while (node := self.made_by(name, "Identity")) is not None:
            name = node.input[0]
        return name

    def is_const(self, name: str) -> bool:
        """An initializer or a Constant output, through Identity."""
        name = self.source(name)
        return name in self.initializers or self.made_by(name, "Constant") is not None

    def const(self, name: str, *, through_identity: bool = False):
        """The value of an initializer or Constant output as a numpy array, else None."""
        import numpy as np
        from onnx import numpy_helper

        if through_identity:
            name = self.source(name)
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name], base_dir=self.base_dir)
        node = self.made_by(name, "Constant")
        for a in node.attribute if node is not None else ():
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name in ("value_int", "value_ints", "value_float", "value_floats"):
                return np.asarray(attr(node, a.name))
        return None


def replace_nodes(graph, nodes: Sequence) -> None:
    """Make ``nodes`` the graph's node list."""
    nodes = list(nodes)
    del graph.node[:]
    graph.node.extend(nodes)


def rewrite_graph(model, nodes: Sequence, new_initializers: Sequence = (), domain: str | None = None) -> None:
    """Make ``nodes`` the graph's node list with ``new_initializers`` added, drop the initializers
    nothing reads any more, and import operator set ``domain`` (version 1) if it is not yet."""
    from onnx import helper

    graph = model.graph
    replace_nodes(graph, nodes)
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in read] + list(new_initializers)
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if domain is not None and not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, 1))


def drop_unused_constants(graph) -> None:
    """Remove initializers and Constant nodes that nothing reads any more."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    replace_nodes(graph, [n for n in graph.node if n.op_type != "Constant" or any(o in used for o in n.output)])
