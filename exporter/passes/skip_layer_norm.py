"""Unfuse ONNX Runtime's SkipLayerNormalization into standard Add and LayerNormalization."""

from __future__ import annotations

from exporter.passes.core import GraphIndex, PassResult, attr, replace_nodes
from runtimes.errors import CheckFailed


def unfuse_skip_layer_norm(model) -> PassResult:
    """Replace each SkipLayerNormalization whose only used output is the first by
    Add(input, skip) -> Add(bias) -> LayerNormalization(axis -1, same epsilon).

    Raises:
        CheckFailed: the model has one to unfuse but imports an opset below 17 (no LayerNormalization).
    """
    from onnx import helper

    g = model.graph
    if any(n.op_type == "SkipLayerNormalization" for n in g.node) and \
            not any(o.domain in ("", "ai.onnx") and o.version >= 17 for o in model.opset_import):
        raise CheckFailed("unfusing SkipLayerNormalization needs opset 17 (LayerNormalization); please report this")
    index = GraphIndex(g)
    nodes, count = [], 0
    for n in g.node:
        if n.op_type != "SkipLayerNormalization" or any(index.is_used(o) for o in n.output[1:] if o):
            nodes.append(n)
            continue
        x, skip, gamma = n.input[:3]
        beta = n.input[3] if len(n.input) > 3 else ""
        bias = n.input[4] if len(n.input) > 4 else ""
        total = n.name + "_residual"
        nodes.append(helper.make_node("Add", [x, skip], [total], name=n.name + "_add"))
        if bias:
            nodes.append(helper.make_node("Add", [total, bias], [n.name + "_biased"], name=n.name + "_add_bias"))
            total = n.name + "_biased"
        nodes.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []), [n.output[0]],
                                      name=n.name + "_layernorm", axis=-1, epsilon=attr(n, "epsilon", 1e-12)))
        count += 1
    if count:
        replace_nodes(g, nodes)
    return PassResult(model, count > 0, count)
