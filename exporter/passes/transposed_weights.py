"""Fold ``Transpose(initializer)`` feeding a MatMul's weight into a transposed initializer.

optimum's export of a model with tied embeddings (Llama, GPT-2) computes the lm_head weight as a
Transpose of the embedding table at run time, so the lm_head MatMul has no constant weight and ONNX
Runtime's weight-only quantizer skips it: the largest MatMul of a small LLM would stay in float.
This pass gives that MatMul its own constant (the embedding table itself stays for the Gather).
"""

from __future__ import annotations

from exporter.passes.core import PassResult, attr


def fold_transposed_matmul_weights(model) -> PassResult:
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    count = 0
    for node in list(graph.node):
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        tr = producers.get(node.input[1])
        if tr is None or tr.op_type != "Transpose" or tr.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[tr.input[0]])
        perm = attr(tr, "perm")
        if weight.ndim != 2 or perm not in (None, [1, 0]):
            continue
        name = f"{tr.output[0]}_folded"
        graph.initializer.append(numpy_helper.from_array(weight.T.copy(), name))
        node.input[1] = name
        if all(c is node for c in consumers.get(tr.output[0], [])):
            graph.node.remove(tr)
        count += 1
    return PassResult(model, count > 0, count)
