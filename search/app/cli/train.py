"""``moeplan train`` and ``moeplan bench``: train a proxy, measure this machine."""

from __future__ import annotations

import argparse
import json
import sys

from scaling.proxy.dispatch import DISPATCH_MODES, INFERENCE_PATHS
from search.app.cli.common import (
    PRECISION_CHOICES,
    add_arch_arguments,
    positive_float,
    positive_int,
    print_json,
    resolve_arch,
)


# --- command: bench ----------------------------------------------------------------------------
def _command_bench(args: argparse.Namespace) -> None:
    spec = resolve_arch(args)
    if args.mode == "train":
        from scaling.train.bench import bench_train

        result = bench_train(
            spec,
            steps=args.steps,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            dtype=args.dtype,
            device=args.device,
            dispatch=args.dispatch,
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
        return
    from scaling.train.bench_infer import bench_infer

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


def _warn(result: dict) -> None:
    """The bench's warnings on stderr, so that stdout stays one JSON document with --json."""
    for warning in result.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)


# --- command: train ----------------------------------------------------------------------------
def _command_train(args: argparse.Namespace) -> None:
    from scaling.train.corpus import prepare_corpus
    from scaling.train.trainer import TrainConfig, Trainer

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
    trainer = Trainer(spec, config, corpus, checkpoint_dir=args.checkpoint_dir)

    def emit(point: dict) -> None:
        if args.jsonl:
            sys.stdout.write(json.dumps(point) + "\n")
            sys.stdout.flush()
        else:
            val = f" val {point['val_loss']:.4f}" if point["val_loss"] is not None else ""
            print(f"step {point['step']:>6} train {point['train_loss']:.4f}{val}", file=sys.stderr)

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
    add_arch_arguments(bench)
    bench.add_argument("--mode", choices=("train", "infer"), required=True)
    bench.add_argument("--steps", type=positive_int, default=10, help="timed training steps")
    bench.add_argument("--batch-size", type=positive_int, default=16)
    bench.add_argument("--seq-len", type=positive_int, default=256)
    bench.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    bench.add_argument("--dispatch", choices=DISPATCH_MODES, default="auto")
    bench.add_argument("--backend", choices=("torch", "mlx"), default="torch")
    bench.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32")
    bench.add_argument("--prompt-tokens", type=positive_int, default=128)
    bench.add_argument("--decode-tokens", type=positive_int, default=32)
    bench.add_argument("--repeats", type=positive_int, default=5)
    bench.add_argument(
        "--inference-path",
        choices=INFERENCE_PATHS,
        default="auto",
        help="infer: how MoE layers run (auto: the path measured fastest per shape regime; off: the training forward)",
    )
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=_command_bench)

    train = commands.add_parser("train", help="train one proxy on real text")
    add_arch_arguments(train)
    train.add_argument("--steps", type=positive_int, default=200)
    train.add_argument("--batch-size", type=positive_int, default=16)
    train.add_argument("--seq-len", type=positive_int, default=256)
    train.add_argument("--lr", type=positive_float, default=3e-3)
    train.add_argument("--warmup-steps", type=int, default=20)
    train.add_argument("--schedule", choices=("cosine", "wsd", "constant"), default="cosine")
    train.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--eval-interval", type=positive_int, default=50)
    train.add_argument("--log-interval", type=positive_int, default=10)
    train.add_argument("--checkpoint-interval", type=int, default=50)
    train.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint here; resume if present")
    train.add_argument("--corpus", default="shakespeare", help="'shakespeare' or a folder of text")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--jsonl", action="store_true", help="stream logged points as JSON lines")
    train.add_argument("--json", action="store_true", help="print the run summary as JSON")
    train.set_defaults(handler=_command_train)
