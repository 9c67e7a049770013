"""write a Triton Inference Server model repository from ONNX/TensorRT artifacts

One model per artifact: config.pbtxt (validated with Triton's ModelConfig schema) and the model file in
version folder 1. A decoder (task text-generation, ONNX) also gets NAME_generate, a Python-backend model
that runs the generation loop over its KV-cache graph (prompts in, text out; not yet run on a Triton server).
"""

from __future__ import annotations

from pathlib import Path

from enginewright.commands._args import PositiveInt, add_output

NAME = "triton"
STAGE = None


def add_arguments(p) -> None:
    p.add_argument("artifacts", type=Path, nargs="+", metavar="ARTIFACT")
    add_output(p, metavar="MODEL_REPOSITORY", quiet=False)
    p.add_argument("--max-batch-size", type=int, default=None,
                   help="default 32; a decoder's model is unbatched (0)")
    p.add_argument("--no-dynamic-batching", action="store_true")
    p.add_argument("--max-queue-delay-us", type=int, default=100)
    p.add_argument("--instances", type=int, default=1, help="instances per model (instance_group count)")
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    p.add_argument("--tensorrt-accelerator", action="store_true", help="ONNX models: ONNX Runtime's TensorRT EP in Triton")
    p.add_argument("--fp16-accelerator", action="store_true", help="with --tensorrt-accelerator: FP16 precision mode")
    p.add_argument("--cuda-graphs", action="store_true", help="TensorRT engines: CUDA graphs in Triton")
    p.add_argument("--ensemble", action="store_true",
                   help="also write NAME_tokenizer (Python backend) and NAME_ensemble: raw texts in, model outputs out")
    p.add_argument("--ensemble-max-length", type=int, default=128, metavar="N", help="tokens per text in the ensemble")
    p.add_argument("--max-new-tokens", type=PositiveInt("--max-new-tokens"), default=64, metavar="N",
                   help="decoders: the generate model's tokens per prompt when a request does not say (default 64)")


def run(args, command: str) -> int:
    from exporter.triton import TritonConfig, write_repository

    cfg = TritonConfig(max_batch_size=args.max_batch_size, dynamic_batching=not args.no_dynamic_batching,
                       max_queue_delay_us=args.max_queue_delay_us, instance_count=args.instances, device=args.device,
                       tensorrt_accelerator=args.tensorrt_accelerator, fp16_accelerator=args.fp16_accelerator,
                       cuda_graphs=args.cuda_graphs, ensemble=args.ensemble, ensemble_max_length=args.ensemble_max_length,
                       max_new_tokens=args.max_new_tokens)
    repo = write_repository(args.artifacts, args.output, config=cfg, force=args.force)
    for d in sorted(p for p in repo.iterdir() if p.is_dir()):
        print(f"{d}/config.pbtxt, {d}/1/{next(iter(sorted((d / '1').glob('model.*'))), Path('(ensemble: no model file)')).name}")
    print(f"serve with: tritonserver --model-repository={repo.resolve()}")
    return 0
