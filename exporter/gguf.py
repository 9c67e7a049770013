"""``import-gguf``: a GGUF file (llama.cpp's format) -> a Hugging Face model directory, once, so every
later stage starts from an ordinary model directory.

transformers reads the GGUF (``from_pretrained(dir, gguf_file=...)``), de-quantizing its weights to
float32; the directory gets safetensors weights, the tokenizer (its special tokens set from the
GGUF's own token ids) and a manifest that records the file, its hash, architecture and quantization.
"""

from __future__ import annotations

import os
from pathlib import Path

from exporter.writer import ArtifactWriter
from runtimes.artifact import Artifact, file_sha256
from runtimes.errors import UsageError
from runtimes.manifests import HfManifest


def file_type_name(value) -> str | int:
    """``general.file_type`` (llama.cpp's LLAMA_FTYPE) as the name llama.cpp prints (``Q4_K_M``,
    ``IQ4_XS``; gguf-py's table), or the number as it is when gguf-py does not know it."""
    from gguf import LlamaFileType

    try:
        return LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return value


_SPECIAL = ("bos", "eos", "unk", "pad")
_TOKEN_ID_FIELDS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


def supported_architectures() -> tuple[str, ...]:
    """The GGUF ``general.architecture`` values transformers can load into a causal LM."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return tuple(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer", "t5", "umt5"))


def read_gguf_header(path: Path) -> dict:
    """The metadata of ``path`` that decides the import: architecture, name, file type, context
    length and the special token ids.

    Raises:
        UsageError: not a readable GGUF file.
    """
    try:
        from gguf import GGUFReader
    except ImportError:
        raise UsageError("import-gguf needs the gguf package: pip install gguf (the models and dev extras bring it)") from None
    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError) as e:  # gguf raises ValueError on a wrong magic or version
        raise UsageError(f"{path}: not a readable GGUF file ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})"
                         "; pass a .gguf model file") from None

    def field(name, default=None):
        f = reader.fields.get(name)
        if f is None:
            return default
        try:
            return f.contents()
        except (ValueError, IndexError):
            return default

    arch = field("general.architecture")
    if not isinstance(arch, str):
        raise UsageError(f"{path}: the GGUF has no general.architecture; it cannot be imported")
    file_type = field("general.file_type")
    return {
        "architecture": arch,
        "name": field("general.name"),
        "file_type": file_type_name(file_type),
        "context_length": field(f"{arch}.context_length"),
        "tensors": len(reader.tensors),
        "token_ids": {k: field(f"tokenizer.ggml.{v}") for k, v in _TOKEN_ID_FIELDS.items()},
        "add_bos_token": field("tokenizer.ggml.add_bos_token"),
    }


def import_gguf(gguf_file: str | os.PathLike, out: str | os.PathLike, *, force: bool = False,
                command: str | None = None) -> Artifact:
    """Write the model in ``gguf_file`` to ``out`` as a Hugging Face directory (``text-generation``).

    Raises:
        UsageError: a missing or unreadable file, an architecture transformers cannot load (checked
            from the header, before the slow load), an output that exists without ``force``.
    """
    src = Path(gguf_file)
    if not src.is_file():
        raise UsageError(f"{src}: no such file; pass a .gguf model file")
    writer = ArtifactWriter(out, force=force, inputs=[src])
    header = read_gguf_header(src)
    supported = supported_architectures()
    if header["architecture"] not in supported:
        raise UsageError(f"{src}: GGUF architecture {header['architecture']!r} is not supported; import-gguf reads "
                         f"{', '.join(supported)}")

    def fill(tmp: Path) -> HfManifest:
        import transformers

        kwargs = dict(gguf_file=src.name, local_files_only=True, trust_remote_code=False)
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(src.parent), **kwargs)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(src.parent), **kwargs)
        except (OSError, ValueError, KeyError, NotImplementedError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UsageError(f"{src}: transformers cannot load this GGUF ({first})") from None
        except RuntimeError as e:  # torch's load_state_dict: tensors whose shapes the header's sizes contradict
            if "size mismatch" not in str(e) and "Error(s) in loading state_dict" not in str(e):
                raise
            detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
            raise UsageError(f"{src}: its tensors do not fit the model its header describes ({detail[:200]}); "
                             "the file is damaged or was written inconsistently") from None
        fixed = _special_tokens_from_header(tokenizer, header["token_ids"])
        add_bos = header["add_bos_token"]
        # transformers' conversion prepends BOS whatever the file says; SmolLM2's chat template already
        # starts with it, and a doubled BOS turns its answers to noise
        if isinstance(add_bos, bool) and getattr(tokenizer, "add_bos_token", add_bos) != add_bos:
            tokenizer.add_bos_token = add_bos
            fixed["add_bos_token"] = add_bos
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        return HfManifest(
            task="text-generation",
            source={"path": str(src.resolve()), "sha256": file_sha256(src), "format": "gguf", **{
                k: header[k] for k in ("architecture", "name", "file_type", "context_length", "tensors")}},
            command=command,
            options={"importer": "transformers from_pretrained(gguf_file=...)",
                     "weights": f"de-quantized from {header['file_type']} to float32",
                     "special_tokens_from_gguf": fixed},
        )

    return writer.write(fill)


def _special_tokens_from_header(tokenizer, token_ids: dict) -> dict:
    """Set bos/eos/unk/pad from the GGUF's token ids where transformers' conversion named another
    token (it names SmolLM2's EOS ``<|im_start|>`` while the file says id 2, ``<|im_end|>``); returns
    what it changed."""
    changed = {}
    for kind in _SPECIAL:
        tid = token_ids.get(kind)
        if not isinstance(tid, int) or not 0 <= tid < len(tokenizer):
            continue
        token = tokenizer.convert_ids_to_tokens(tid)
        if getattr(tokenizer, f"{kind}_token") != token:
            setattr(tokenizer, f"{kind}_token", token)
            changed[kind] = token
    return changed
