"""``moeplan train`` and ``moeplan bench``: train a proxy, measure this machine."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from scaling.errors import UserError
from scaling.proxy.dispatch import DISPATCH_MODES, INFERENCE_PATHS
from search.app.cli.common import (
    PRECISION_CHOICES,
    add_arch_arguments,
    check_output_folder,
    non_negative_int,
    positive_float,
    positive_int,
    print_json,
    resolve_arch,
    seed_int,
)
from search.app.cli.progress import StderrProgress

if TYPE_CHECKING:
    from scaling.shape.arch import ArchSpec


# --- command: bench ----------------------------------------------------------------------------
def _command_bench(args: argparse.Namespace) -> None:
    """``moeplan bench``: llama.cpp, or the proxy in torch (training or inference)."""
    if args.runtime == "llamacpp":
        _bench_llamacpp(args)
        return
    if args.gguf:
        raise UserError("--gguf goes with --runtime llamacpp")
    if not (args.hf_config or args.arch or args.preset):
        raise UserError("give one of --hf-config PATH, --arch PATH or --preset NAME")
    spec = resolve_arch(args)
    if args.mode == "train":
        _bench_torch_train(args, spec)
    else:
        _bench_torch_infer(args, spec)


def _bench_torch_train(args: argparse.Namespace, spec: ArchSpec) -> None:
    """Training steps of the proxy in torch, after checking that they fit in memory."""
    from scaling.train.memory_check import check_fits, train_bytes

    check_fits(train_bytes(spec, args.batch_size, args.seq_len), f"--batch-size {args.batch_size} x --seq-len "
               f"{args.seq_len}", "lower them")  # fmt: skip
    from scaling.train.bench import bench_train  # torch: after the quick checks

    progress = StderrProgress(enabled=not (args.json or args.quiet))
    result = bench_train(
        spec,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        dtype=args.dtype,
        device=args.device,
        dispatch=args.dispatch,
        progress=progress,
    )
    _warn(result)
    if args.json:
        print_json(result)
        return
    from search.app.report import human_bytes, print_table

    print_table(
        f"Training step: {spec.name or 'arch'} ({result['dtype']}, {result['device']})",
        ["step ms (median)", "tokens/s", "MFU", "host delivered", "peak RSS", "RSS growth"],
        [
            [
                f"{result['step_ms']:.1f}",
                f"{result['tokens_per_s']:.0f}",
                f"{result['mfu']:.3f}",
                f"{result['host_delivered_fraction']:.0%} of peak",
                human_bytes(result["peak_rss_bytes"]),
                human_bytes(result["rss_growth_bytes"]),
            ]
        ],
    )


def _bench_torch_infer(args: argparse.Namespace, spec: ArchSpec) -> None:
    """Prefill and decode of the proxy in torch or MLX, after checking that they fit in memory."""
    from scaling.train.memory_check import check_fits, infer_bytes

    check_fits(infer_bytes(spec, args.prompt_tokens, args.decode_tokens), f"--prompt-tokens {args.prompt_tokens} "
               f"with --decode-tokens {args.decode_tokens}", "lower them")  # fmt: skip
    from scaling.train.bench_infer import bench_infer  # torch: after the quick checks

    progress = StderrProgress(enabled=not (args.json or args.quiet))
    result = bench_infer(
        spec,
        backend=args.backend,
        precision=args.precision,
        prompt_tokens=args.prompt_tokens,
        decode_tokens=args.decode_tokens,
        device=args.device,
        repeats=args.repeats,
        inference_path=args.inference_path,
    )
    progress(f"inference: {args.repeats} timed repeats of prefill and decode", 1, 1)
    _warn(result)
    if args.json:
        print_json(result)
        return
    from search.app.report import human_bytes, print_table

    columns = ["prefill ms (median)", "spread", "decode tokens/s (median)", "spread", "peak memory"]
    row = [
        f"{result['prefill_ms']:.2f}",
        f"{result.get('prefill_spread', 0):.0%}",
        f"{result['decode_tokens_per_s']:.1f}",
        f"{result.get('decode_spread', 0):.0%}",
        human_bytes(result["peak_memory_bytes"]),
    ]
    if "host_delivered_fraction" in result:
        columns.append("host delivered")
        row.append(f"{result['host_delivered_fraction']:.0%} of peak")
    paths = result.get("moe_inference")
    if paths:
        columns.append("MoE path (prefill, decode)")
        row.append(", ".join(f"{paths[phase]['path']} ({paths[phase]['regime']})" for phase in ("prefill", "decode")))
    print_table(f"Inference: {spec.name or 'arch'} ({result['backend']}, {result['precision']})", columns, [row])


def _bench_llamacpp(args: argparse.Namespace) -> None:
    """Prefill and decode of a shape (exported here) or a GGUF file in llama.cpp."""
    from search.app.llamacpp_bench import bench_llamacpp

    if args.mode != "infer":
        raise UserError("--runtime llamacpp measures inference: use --mode infer")
    has_shape = bool(args.hf_config or args.arch or args.preset)
    if has_shape == bool(args.gguf):
        raise UserError("give a shape (--arch, --preset, --hf-config) or --gguf FILE, one of them")
    spec = resolve_arch(args) if has_shape else None
    result = bench_llamacpp(
        spec, args.gguf, args.type, args.prompt_tokens, args.decode_tokens, args.repeats, threads=args.threads
    )
    _warn(result)
    if args.json:
        print_json(result)
        return
    from search.app.report import print_table

    print_table(
        f"llama.cpp: {result['arch'] or 'arch'} ({result['type']}, {result['llama_arch']}, "
        f"{result['threads']} threads)",
        ["prefill ms (median)", "spread", "decode tokens/s (median)", "spread", "host delivered"],
        [
            [
                f"{result['prefill_ms']:.2f}",
                f"{result['prefill_spread']:.0%}",
                f"{result['decode_tokens_per_s']:.1f}",
                f"{result['decode_spread']:.0%}",
                f"{result['host_delivered_fraction']:.0%} of peak",
            ]
        ],
    )


def _warn(result: dict) -> None:
    """The bench's warnings on stderr, so that stdout stays one JSON document with --json."""
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)


# --- command: train ----------------------------------------------------------------------------
def _command_train(args: argparse.Namespace) -> None:
    from scaling.train.corpus import check_corpus, prepare_corpus
    from scaling.train.trainer import TrainConfig, Trainer

    if args.checkpoint_dir:
        check_output_folder(args.checkpoint_dir, "--checkpoint-dir")  # before the corpus and the model
    check_corpus(args.corpus)
    spec = resolve_arch(args)
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=min(args.warmup_steps, args.steps),
        schedule=args.schedule,
        dtype=args.dtype,
        seed=args.seed,
        eval_interval=args.eval_interval,
        log_interval=args.log_interval,
        checkpoint_interval=args.checkpoint_interval,
        device=args.device,
    )
    corpus = prepare_corpus(args.corpus)
    trainer = Trainer(
        spec, config, corpus, checkpoint_dir=args.checkpoint_dir, checkpoint_every_s=args.checkpoint_every_s
    )
    if trainer.resumed_from_step and not (args.json or args.quiet):
        print(f"resumed from step {trainer.resumed_from_step} of {args.steps}", file=sys.stderr)
    progress = StderrProgress(enabled=not (args.json or args.quiet), every_s=0.0)
    progress("step", trainer.step, args.steps)  # the clock of the ETA starts here

    def emit(point: dict) -> None:
        if args.jsonl:
            sys.stdout.write(json.dumps(point) + "\n")
            sys.stdout.flush()
        val = f" val {point['val_loss']:.4f}" if point["val_loss"] is not None else ""
        progress("step", point["step"], args.steps, f"train {point['train_loss']:.4f}{val}")

    result = trainer.run(callback=emit)
    if args.json:
        print_json(
            {
                "final_train_loss": result.final_train_loss,
                "final_val_loss": result.final_val_loss,
                "tokens": result.tokens,
                "elapsed_s": result.elapsed_s,
                "resumed_from_step": result.resumed_from_step,
                "history": result.history,
            }
        )


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure training or inference on this machine")
    add_arch_arguments(bench, required=False)
    bench.add_argument(
        "--runtime", choices=("torch", "llamacpp"), default="torch", help="infer: the proxy in torch/MLX, or llama.cpp"
    )
    bench.add_argument("--gguf", metavar="FILE", help="llamacpp: an exported GGUF (its manifest gives the shape)")
    bench.add_argument("--type", default="q4_0", help="llamacpp: f32, f16, q8_0 or q4_0 for the export")
    bench.add_argument("--threads", type=positive_int, default=None, help="llamacpp: threads (default: all cores)")
    bench.add_argument("--mode", choices=("train", "infer"), required=True, help="time training or inference")
    bench.add_argument("--steps", type=positive_int, default=10, help="timed training steps")
    bench.add_argument("--batch-size", type=positive_int, default=16, help="sequences per training step")
    bench.add_argument("--seq-len", type=positive_int, default=256, help="tokens per sequence")
    bench.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="training precision")
    bench.add_argument("--dispatch", choices=DISPATCH_MODES, default="auto", help="MoE dispatch implementation")
    bench.add_argument("--backend", choices=("torch", "mlx"), default="torch", help="inference backend")
    bench.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32", help="inference weight precision")
    bench.add_argument("--prompt-tokens", type=positive_int, default=128, help="tokens prefilled")
    bench.add_argument("--decode-tokens", type=positive_int, default=32, help="tokens decoded after the prompt")
    bench.add_argument("--repeats", type=positive_int, default=5, help="timed inference repeats")
    bench.add_argument(
        "--inference-path",
        choices=INFERENCE_PATHS,
        default="auto",
        help="infer: how MoE layers run (auto: the path measured fastest per shape regime; off: the training forward)",
    )
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    bench.add_argument("--json", action="store_true", help="print one JSON document")
    bench.add_argument("--quiet", action="store_true", help="no progress on stderr")
    bench.set_defaults(handler=_command_bench)

    train = commands.add_parser("train", help="train one proxy on real text")
    add_arch_arguments(train)
    train.add_argument("--steps", type=positive_int, default=200, help="optimizer steps")
    train.add_argument("--batch-size", type=positive_int, default=16, help="sequences per step")
    train.add_argument("--seq-len", type=positive_int, default=256, help="tokens per sequence")
    train.add_argument("--lr", type=positive_float, default=3e-3, help="peak learning rate")
    train.add_argument("--warmup-steps", type=non_negative_int, default=20, help="linear warm-up steps")
    train.add_argument(
        "--schedule", choices=("cosine", "wsd", "constant"), default="cosine", help="learning-rate schedule"
    )
    train.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="fp32, or bf16 autocast")
    train.add_argument("--seed", type=seed_int, default=0, help="seeds the weights and the batch order")
    train.add_argument("--eval-interval", type=positive_int, default=50, help="steps between validation losses")
    train.add_argument("--log-interval", type=positive_int, default=10, help="steps between logged points")
    train.add_argument(
        "--checkpoint-interval", type=non_negative_int, default=50, help="steps between checkpoints (0: at the end)"
    )
    train.add_argument(
        "--checkpoint-every-s",
        type=positive_float,
        default=60.0,
        help="also checkpoint when this many seconds passed since the last one",
    )
    train.add_argument(
        "--checkpoint-dir", metavar="DIR", help="checkpoint here; resume if present (same settings only)"
    )
    train.add_argument("--corpus", default="shakespeare", help="'shakespeare', 'prose-code' or a folder of text")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present")
    train.add_argument("--jsonl", action="store_true", help="stream logged points as JSON lines on stdout")
    train.add_argument("--json", action="store_true", help="print the run summary as JSON")
    train.add_argument("--quiet", action="store_true", help="no progress on stderr")
    train.set_defaults(handler=_command_train)
