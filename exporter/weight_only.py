"""Weight-only quantization of an ONNX LLM: MatMul weights to INT4 or INT8 ``MatMulNBits`` blocks
(ONNX Runtime's ``matmul_nbits_quantizer``), activations stay float.

One config object per technique, as torchao does: ``WeightOnlyConfig`` validates itself and the
handler does the work. The tied lm_head (a Transpose of the embedding table in optimum's export) is
given its own constant first, so it is quantized too (``exporter/passes/transposed_weights.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from exporter.manifest import onnx_manifest
from exporter.onnx_file import check_onnx, save_with_external_data
from exporter.passes.transposed_weights import fold_transposed_matmul_weights
from exporter.writer import ArtifactWriter, open_input
from runtimes.artifact import Artifact
from runtimes.errors import UsageError

ALGORITHMS = ("rtn", "hqq")


@dataclass(frozen=True)
class WeightOnlyConfig:
    """``bits`` 4 or 8; ``block_size`` weights share one scale (a power of two, >= 16);
    ``symmetric`` (no zero point); ``algorithm`` ``rtn`` (round to nearest, blockwise) or ``hqq``
    (half-quadratic, 4 bits, asymmetric); ``exclude``: MatMul node names kept in float."""

    bits: int = 4
    block_size: int = 32
    symmetric: bool = True
    algorithm: str = "rtn"
    exclude: tuple[str, ...] = ()
    accuracy_level: int | None = None  # MatMulNBits' compute type on CPU: None (float) or 4 (int8 activations)

    def __post_init__(self):
        if self.bits not in (4, 8):
            raise UsageError(f"--bits {self.bits}: weight-only quantization takes 4 or 8")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UsageError(f"--block-size {self.block_size}: give a power of two, at least 16")
        if self.algorithm not in ALGORITHMS:
            raise UsageError(f"--algorithm {self.algorithm!r}: choose one of {', '.join(ALGORITHMS)} (GPTQ needs "
                             "calibration and is not wired yet)")
        if self.algorithm == "hqq" and (self.bits != 4 or self.symmetric):
            raise UsageError("--algorithm hqq quantizes to 4 bits with a zero point: pass --bits 4 --asymmetric")

    def algo_config(self):
        from onnxruntime.quantization import matmul_nbits_quantizer as mq

        if self.algorithm == "hqq":
            return mq.HQQWeightOnlyQuantConfig(block_size=self.block_size, bits=self.bits)
        return mq.DefaultWeightOnlyQuantConfig(block_size=self.block_size, is_symmetric=self.symmetric, bits=self.bits,
                                               accuracy_level=self.accuracy_level)


def quantize_weights(artifact: str | os.PathLike | Artifact, out: str | os.PathLike, config: WeightOnlyConfig, *,
                     force: bool = False, command: str | None = None) -> Artifact:
    """Write ``artifact``'s model with its MatMul weights in ``config.bits`` to ``out``.

    Raises:
        UsageError: not an ONNX artifact, an excluded name that is no MatMul, output exists.
    """
    import onnx

    src = open_input(artifact, "onnx", "quantize")
    writer = ArtifactWriter(out, force=force, inputs=[src.path])
    model = onnx.load(str(src.model_file))
    matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    if unknown := sorted(set(config.exclude) - matmuls):
        raise UsageError(f"--exclude {unknown[0]!r}: no MatMul of {src.model_file} has that name")
    folded = fold_transposed_matmul_weights(model)
    consts = {i.name for i in model.graph.initializer}
    candidates = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in consts]

    def fill(tmp):
        from onnxruntime.quantization import matmul_nbits_quantizer as mq

        from exporter.quiet import quiet_export

        with quiet_export():
            q = mq.MatMulNBitsQuantizer(model, nodes_to_exclude=list(config.exclude), algo_config=config.algo_config())
            q.process()
        result = q.model.model
        quantized = sum(n.op_type == "MatMulNBits" for n in result.graph.node)
        path = tmp / "model.onnx"
        large = result.ByteSize() > 1_800_000_000
        onnx.save(result, str(path), save_as_external_data=large, location="model.onnx_data" if large else None)
        if large:
            save_with_external_data(path)
        checks = check_onnx(path)
        return onnx_manifest(
            tmp, task=src.task, source=src, command=command, checks=checks,
            options={"mode": "weight-only", "bits": config.bits, "block_size": config.block_size,
                     "symmetric": config.symmetric, "algorithm": config.algorithm, "exclude": list(config.exclude)},
            parity=None,
            quantization={"kind": f"weight-only int{config.bits} (MatMulNBits)", "matmuls_with_constant_weights":
                          len(candidates), "quantized": quantized, "kept_float": sorted(config.exclude),
                          "lm_head": "folded the tied embedding's Transpose into a constant, then quantized"
                          if folded.modified else "had a constant weight already"},
        )

    return writer.write(fill, companions_from=src.path)
