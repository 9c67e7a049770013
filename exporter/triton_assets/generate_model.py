"""Triton Python-backend model: prompts in, generated text out (written by enginewright).

It runs the generation loop of a decoder whose KV-cache graph is served beside it (``settings.json``:
``decoder``, an ONNX Runtime backend model of enginewright's text-generation IO contract): tokenize
the prompts (left-padded), a prefill with an empty cache, then one decode step per token with the
``present.*`` outputs fed back as ``past_key_values.*``, each call a BLS request
(``pb_utils.InferenceRequest``) to the decoder; greedy, or sampling (temperature, top-k, top-p,
seed); a row stops at EOS, the loop when every row has; the new tokens detokenized.

Inputs: ``PROMPT`` (TYPE_STRING ``[-1]``, one or more prompts, one batch) and optional one-element
``MAX_NEW_TOKENS`` (INT32), ``DO_SAMPLE`` (BOOL), ``TEMPERATURE`` (FP32), ``TOP_K`` (INT32),
``TOP_P`` (FP32), ``SEED`` (INT64), ``CHAT`` (BOOL: the prompt in the tokenizer's chat template).
Outputs: ``TEXT`` (TYPE_STRING ``[-1]``), ``TOKENS`` (INT64 ``[-1, -1]``, padded after EOS) and
``LENGTHS`` (INT64 ``[-1]``, new tokens per row, EOS included).

Self-contained on purpose (numpy and transformers' tokenizer only): Triton's Python environment has
no enginewright. The loop mirrors ``runtimes/generation.py`` (same positions, padding and picks, so
the same tokens for the same logits); ``tests/exporter/test_triton_llm.py`` checks that on CPU.
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_PAST, _PRESENT = "past_key_values.", "present."


def load_settings(here: Path = HERE) -> dict:
    return json.loads((here / "settings.json").read_text(encoding="utf-8"))


def positions(mask: np.ndarray, past: int = 0) -> np.ndarray:
    """Position ids of a left-padded batch: real tokens counted from 0, padding at 1."""
    pos = np.cumsum(mask, axis=1, dtype=np.int64) - 1
    pos[mask == 0] = 1
    return np.ascontiguousarray(pos[:, past:])


def pick(logits: np.ndarray, sampling: dict, rng) -> np.ndarray:
    """The next token of every row from its last-position ``logits`` ``[batch, vocab]``."""
    if not sampling["do_sample"]:
        return logits.argmax(-1).astype(np.int64)
    z = logits.astype(np.float64) / sampling["temperature"]
    if sampling["top_k"]:
        kth = np.sort(z, axis=-1)[:, -min(sampling["top_k"], z.shape[-1])][:, None]
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    if sampling["top_p"] < 1:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, -1)
        drop = np.cumsum(sorted_p, -1) - sorted_p >= sampling["top_p"]
        np.put_along_axis(p, order, np.where(drop, 0.0, sorted_p), -1)
        p /= p.sum(-1, keepdims=True)
    return np.array([rng.choice(p.shape[-1], p=row) for row in p], dtype=np.int64)


def generate(step, ids: np.ndarray, mask: np.ndarray, settings: dict, max_new_tokens: int, sampling: dict):
    """``(tokens [batch, steps], lengths [batch])`` after the left-padded prompts ``ids``/``mask``;
    ``step(feeds) -> outputs`` runs the decoder once (a BLS request on Triton)."""
    batch = ids.shape[0]
    past = {p["name"]: np.zeros((batch, p["heads"], 0, p["head_dim"]), dtype=p["dtype"]) for p in settings["past"]}
    rng = np.random.default_rng(sampling["seed"])
    eos = np.array(settings["eos_token_ids"] or [-1], dtype=np.int64)
    done, lengths, tokens = np.zeros(batch, bool), np.zeros(batch, np.int64), []
    feed_ids = ids
    for i in range(max_new_tokens):
        feeds = {"input_ids": feed_ids, "attention_mask": mask, **past}
        if settings["takes_positions"]:
            feeds["position_ids"] = positions(mask, mask.shape[1] - feed_ids.shape[1])
        out = step(feeds)
        nxt = np.where(done, settings["pad_token_id"], pick(out["logits"][:, -1], sampling, rng))
        tokens.append(nxt)
        lengths += ~done
        done |= np.isin(nxt, eos)
        if done.all() or i == max_new_tokens - 1:
            break
        past = {_PAST + k[len(_PRESENT):]: v for k, v in out.items() if k.startswith(_PRESENT)}
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
        feed_ids = nxt[:, None]
    return np.stack(tokens, 1), lengths


def encode(tokenizer, prompts, chat: bool, max_prompt_tokens: int):
    """Left-padded ``input_ids``/``attention_mask`` (int64), truncated to ``max_prompt_tokens``."""
    if chat and getattr(tokenizer, "chat_template", None):
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    enc = tokenizer(list(prompts), padding="longest", truncation=True, max_length=max_prompt_tokens, return_tensors="np")
    return (np.ascontiguousarray(enc["input_ids"], dtype=np.int64),
            np.ascontiguousarray(enc["attention_mask"], dtype=np.int64))


def decode(tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> list[str]:
    return [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True) for row, n in zip(tokens, lengths)]


def load_tokenizer(here: Path = HERE):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(here / "tokenizer"), local_files_only=True)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _numpy(tensor) -> np.ndarray:
    if tensor.is_cpu():
        return tensor.as_numpy()
    # an ONNX Runtime model on a GPU instance may answer a BLS request with device tensors
    from torch.utils.dlpack import from_dlpack

    return from_dlpack(tensor.to_dlpack()).cpu().numpy()


def _scalar(pb_utils, request, name, default):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return default if t is None else t.as_numpy().reshape(-1)[0].item()


class TritonPythonModel:
    def initialize(self, args):
        self.settings = load_settings()
        self.tokenizer = load_tokenizer()

    def _step(self, pb_utils, feeds: dict) -> dict:
        names = ["logits", *(_PRESENT + p["name"][len(_PAST):] for p in self.settings["past"])]
        request = pb_utils.InferenceRequest(model_name=self.settings["decoder"], requested_output_names=names,
                                            inputs=[pb_utils.Tensor(k, v) for k, v in feeds.items()])
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(response.error().message())
        return {n: _numpy(pb_utils.get_output_tensor_by_name(response, n)) for n in names}

    def _one(self, pb_utils, request):
        s = self.settings
        raw = pb_utils.get_input_tensor_by_name(request, "PROMPT").as_numpy().reshape(-1)
        prompts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw]
        new = int(_scalar(pb_utils, request, "MAX_NEW_TOKENS", s["max_new_tokens"]))
        sampling = {"do_sample": bool(_scalar(pb_utils, request, "DO_SAMPLE", False)),
                    "temperature": float(_scalar(pb_utils, request, "TEMPERATURE", 1.0)),
                    "top_k": int(_scalar(pb_utils, request, "TOP_K", 0)),
                    "top_p": float(_scalar(pb_utils, request, "TOP_P", 1.0)),
                    "seed": int(_scalar(pb_utils, request, "SEED", 0))}
        if not prompts or new < 1 or sampling["temperature"] <= 0 or sampling["top_k"] < 0 or not 0 < sampling["top_p"] <= 1:
            raise ValueError("PROMPT needs at least one prompt, MAX_NEW_TOKENS >= 1, TEMPERATURE > 0, TOP_K >= 0, "
                             "TOP_P in (0, 1]")
        limit = s["max_positions"]
        if limit is not None and new >= limit:
            raise ValueError(f"MAX_NEW_TOKENS {new}: the model's context is {limit} positions")
        room = s["max_prompt_tokens"] if limit is None else min(s["max_prompt_tokens"], limit - new)
        ids, mask = encode(self.tokenizer, prompts, bool(_scalar(pb_utils, request, "CHAT", False)), room)
        tokens, lengths = generate(lambda feeds: self._step(pb_utils, feeds), ids, mask, s, new, sampling)
        text = np.array([t.encode("utf-8") for t in decode(self.tokenizer, tokens, lengths)], dtype=np.object_)
        return pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", text), pb_utils.Tensor("TOKENS", tokens),
                                           pb_utils.Tensor("LENGTHS", lengths)])

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                responses.append(self._one(pb_utils, request))
            except (ValueError, pb_utils.TritonModelException) as e:  # this request fails, the others are answered
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(e))))
        return responses
