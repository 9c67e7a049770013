"""A compact decoder graph for ONNX Runtime on the CPU, written from a Llama-family model's weights.

A torch export of SmolLM2-135M has about 7,400 nodes, most of them shape arithmetic and a causal
mask rebuilt in every layer; at batch 1 each node costs a kernel launch, and a decode step spends
more time in them than in the weights. This builder writes the same model in about 15 nodes per
layer, with ONNX Runtime's fused CPU kernels where they exist (the way onnxruntime-genai's model
builder does, which needs transformers >= 5 and cannot share this environment):

- RMSNorm: ONNX's ``RMSNormalization`` (opset 23) for the first, then ONNX Runtime's
  ``SkipSimplifiedLayerNormalization`` with the residual add fused in;
- ``RotaryEmbedding`` (com.microsoft) on the query and key projections, fed by ``position_ids`` and
  cos/sin tables taken from the model's own rotary module (so rope scaling is the model's);
- attention: ONNX Runtime's ``GroupQueryAttention`` (rotary applied before it, so positions come
  from ``position_ids``; the cache concatenated inside, as ``present.*``), one node a layer instead of
  18 standard ones (reshapes, transposes, two MatMuls, softmax, the cache's Concat): a decode step of
  SmolLM2 at int8 activations 1.035x faster at past 40, 20 of 24 interleaved rounds, level at past
  200 (``benchmarks/decode_duel.py``, 2026-12-01), prefill as fast;
- one additive mask for every layer (causal and padding from ``attention_mask``), built once and
  given to every attention node as ``attention_bias``, with every row's length set to the whole
  (so left padding is the mask's business, not the kernel's);
  one limit of the kernel: several tokens after a cache only at batch 1 (ONNX Runtime refuses a
  larger batch there); the project's loops never ask it (prefills start from an empty cache, steps
  are one token);
- every projection a ``MatMul`` with a constant weight, so weight-only quantization (and its
  perplexity-budgeted search) applies unchanged; node names follow the torch export's
  (``/model/layers.{i}/self_attn/q_proj/MatMul``, ``/lm_head/MatMul``).

The IO contract is the task's (``runtimes/tasks/generation.py``): the same inputs and outputs as
optimum's export, so the generation loop, compare and bench take either graph. Left padding works
as in the torch export (padded query rows attend uniformly and are ignored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtimes.errors import UsageError

# architectures whose forward this builder writes: RMSNorm, rotary (rotate_half), SiLU-gated MLP
SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_MS = "com.microsoft"
_NEG = np.float32(np.finfo(np.float32).min)


class _Graph:
    def __init__(self):
        from onnx import helper

        self.helper = helper
        self.nodes, self.inits = [], []
        self._n = 0

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs, *, name: str | None = None, outputs: int | list[str] = 1, domain: str = "",
           **attrs):
        self._n += 1
        name = name or f"/{op_type}_{self._n}"
        outs = list(outputs) if isinstance(outputs, list) else [f"{name}/output_{i}" for i in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, name=name, domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs


def supports(config) -> str | None:
    """None when this builder writes ``config``'s model; else why not, in a few words."""
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a in SUPPORTED for a in archs):
        return f"architecture {archs or '?'} is not one of {list(SUPPORTED)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} (the builder writes SiLU)"
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", window is not None) and window and window < config.max_position_embeddings:
        return f"sliding-window attention ({window} < {config.max_position_embeddings} positions)"
    if getattr(config, "mlp_bias", False):
        return "MLP biases"
    return None


def _rotary_tables(model, head_dim: int, max_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin ``[max_pos, head_dim / 2]`` from the model's rotary module (its scaling included);
    transformers' rotate_half layout repeats the half, which the non-interleaved kernel expects."""
    import torch

    rotary = model.model.rotary_emb
    pos = torch.arange(max_pos, dtype=torch.int64)[None]
    probe = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(probe, pos)
    half = head_dim // 2
    return cos[0, :, :half].float().numpy(), sin[0, :, :half].float().numpy()


def build_decoder_graph(model, *, opset: int = 23):
    """The ONNX ``ModelProto`` of ``model`` (a transformers Llama-family causal LM, float32, eval)."""
    from onnx import TensorProto, helper

    cfg = model.config
    reason = supports(cfg)
    if reason:
        raise UsageError(f"export --graph cpu: {reason}; use --graph portable")
    import torch

    sd = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    eps = float(cfg.rms_norm_eps)
    g = _Graph()
    op, const = g.op, g.const

    def weight(name: str) -> np.ndarray:
        return sd[name]

    def linear(x: str, prefix: str, node: str) -> str:
        y = op("MatMul", [x, const(f"{prefix}.weight.T", weight(f"{prefix}.weight").T)], name=f"{node}/MatMul")
        if f"{prefix}.bias" in sd:
            y = op("Add", [y, const(f"{prefix}.bias", weight(f"{prefix}.bias"))], name=f"{node}/Add")
        return y

    # shapes and the additive mask [batch, 1, seq, total], built once for every layer
    ids_shape = op("Shape", ["input_ids"], name="/mask/ids_shape")
    mask_shape = op("Shape", ["attention_mask"], name="/mask/mask_shape")
    seq = op("Gather", [ids_shape, const("/mask/one", np.array(1, np.int64))], name="/mask/seq", axis=0)
    total = op("Gather", [mask_shape, "/mask/one"], name="/mask/total", axis=0)
    past = op("Sub", [total, seq], name="/mask/past")
    zero = const("/mask/zero", np.array(0, np.int64))
    unit = const("/mask/unit", np.array(1, np.int64))
    key_pos = op("Range", [zero, total, unit], name="/mask/key_pos")                        # [total]
    query_pos = op("Range", [past, total, unit], name="/mask/query_pos")                    # [seq]
    query_col = op("Unsqueeze", [query_pos, const("/mask/axis1", np.array([1], np.int64))], name="/mask/query_col")
    causal = op("LessOrEqual", [key_pos, query_col], name="/mask/causal")                   # [seq, total]
    real = op("Cast", ["attention_mask"], name="/mask/real", to=TensorProto.BOOL)          # [batch, total]
    real4 = op("Unsqueeze", [real, const("/mask/axes12", np.array([1, 2], np.int64))], name="/mask/real4")
    allowed = op("And", [causal, real4], name="/mask/allowed")                              # [batch, 1, seq, total]
    bias = op("Where", [allowed, const("/mask/open", np.array(0, np.float32)), const("/mask/closed", _NEG)],
              name="/mask/bias")
    # GroupQueryAttention's lengths: every row as long as the whole (padding is in the bias)
    total32 = op("Cast", [op("Unsqueeze", [total, const("/attn/axis0", np.array([0], np.int64))], name="/attn/total1")],
                 name="/attn/total32", to=TensorProto.INT32)                                # [1]
    batch = op("Slice", [mask_shape, const("/attn/zero1", np.array([0], np.int64)), const("/attn/one1", np.array([1], np.int64))],
               name="/attn/batch")                                                          # [1]
    seqlens_k = op("Expand", [op("Sub", [total32, const("/attn/one32", np.array([1], np.int32))], name="/attn/last"),
                              batch], name="/attn/seqlens_k")                               # [batch]
    total_len = op("Squeeze", [total32], name="/attn/total_sequence_length")               # scalar

    cos, sin = _rotary_tables(model, head_dim, cfg.max_position_embeddings)
    cos_name, sin_name = const("/rotary/cos_cache", cos), const("/rotary/sin_cache", sin)

    x = op("Gather", [const("model.embed_tokens.weight", weight("model.embed_tokens.weight")), "input_ids"],
           name="/model/embed_tokens/Gather", axis=0)
    residual, pending = x, None
    for i in range(layers):
        p, node = f"model.layers.{i}", f"/model/layers.{i}"

        def norm(name: str, gamma: str):
            nonlocal residual
            if pending is None:
                out = op("RMSNormalization", [residual, const(gamma, weight(gamma))], name=name, axis=-1, epsilon=eps)
            else:
                out, _, _, residual = op("SkipSimplifiedLayerNormalization", [pending, residual, const(gamma, weight(gamma))],
                                         name=name, outputs=[f"{name}/output_0", "", "", f"{name}/output_3"],
                                         domain=_MS, epsilon=eps)
            return out

        h = norm(f"{node}/input_layernorm", f"{p}.input_layernorm.weight")
        q = linear(h, f"{p}.self_attn.q_proj", f"{node}/self_attn/q_proj")
        k = linear(h, f"{p}.self_attn.k_proj", f"{node}/self_attn/k_proj")
        v = linear(h, f"{p}.self_attn.v_proj", f"{node}/self_attn/v_proj")
        q = op("RotaryEmbedding", [q, "position_ids", cos_name, sin_name], name=f"{node}/self_attn/q_rotary",
               domain=_MS, interleaved=0, num_heads=heads)
        k = op("RotaryEmbedding", [k, "position_ids", cos_name, sin_name], name=f"{node}/self_attn/k_rotary",
               domain=_MS, interleaved=0, num_heads=kv_heads)
        ctx, _, _ = op("GroupQueryAttention", [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k,
                                               total_len, "", "", "", bias], name=f"{node}/self_attn/attention",
                       outputs=[f"{node}/self_attn/attention/output_0", f"present.{i}.key", f"present.{i}.value"],
                       domain=_MS, num_heads=heads, kv_num_heads=kv_heads, scale=float(1.0 / np.sqrt(head_dim)))
        pending = linear(ctx, f"{p}.self_attn.o_proj", f"{node}/self_attn/o_proj")

        h = norm(f"{node}/post_attention_layernorm", f"{p}.post_attention_layernorm.weight")
        gate = linear(h, f"{p}.mlp.gate_proj", f"{node}/mlp/gate_proj")
        up = linear(h, f"{p}.mlp.up_proj", f"{node}/mlp/up_proj")
        act = op("Mul", [gate, op("Sigmoid", [gate], name=f"{node}/mlp/act_sigmoid")], name=f"{node}/mlp/act")
        pending = linear(op("Mul", [act, up], name=f"{node}/mlp/gated"), f"{p}.mlp.down_proj", f"{node}/mlp/down_proj")

    out = op("SkipSimplifiedLayerNormalization", [pending, residual, const("model.norm.weight", weight("model.norm.weight"))],
             name="/model/norm", domain=_MS, epsilon=eps)
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    g.nodes.append(helper.make_node("MatMul", [out, const("lm_head.weight.T", head.T)], ["logits"], name="/lm_head/MatMul"))

    dims = ("batch_size", "sequence_length")
    total_dims = ("batch_size", "past_sequence_length + sequence_length")
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, dims),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, total_dims),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64, dims)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, (*dims, cfg.vocab_size))]
    for i in range(layers):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kv}", TensorProto.FLOAT, ("batch_size", kv_heads, "past_sequence_length", head_dim)))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kv}", TensorProto.FLOAT, ("batch_size", kv_heads, total_dims[1], head_dim)))
    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(_MS, 1)],
                             producer_name="enginewright", producer_version="decoder-graph")


def write_decoder_graph(src_dir: Path, out_dir: Path, *, opset: int = 23, external_data: bool = False) -> dict:
    """Load the causal LM in ``src_dir`` (float32, no remote code) and write ``out_dir/model.onnx``;
    returns what the manifest records about the graph."""
    import torch
    from transformers import AutoModelForCausalLM

    from exporter.onnx_file import save_model

    model = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.float32, trust_remote_code=False)
    model.eval()
    proto = build_decoder_graph(model, opset=opset)
    out_dir.mkdir(parents=True, exist_ok=True)
    external = external_data or proto.ByteSize() > 1_800_000_000  # protobuf's 2 GB limit
    save_model(proto, out_dir / "model.onnx", external)
    counts: dict[str, int] = {}
    for n in proto.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return {"graph": "cpu", "nodes": len(proto.graph.node), "op_types": dict(sorted(counts.items())),
            "external_data": external}
