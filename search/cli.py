"""The ``moeplan`` command line.

Conventions (see ``INTERFACE.md``): ``--json`` prints exactly one JSON document on stdout;
progress goes to stderr; a user error prints one ``error: ...`` line and exits 2; a run-time
failure exits 1. Heavy modules (torch, scipy, optuna) are imported inside the handlers so
that planner commands start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from scaling.errors import UserError
from scaling.train_config import DISPATCH_MODES

EXIT_USER_ERROR = 2
EXIT_RUNTIME_ERROR = 1


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage problem as one ``error: ...`` line with exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USER_ERROR)


# --- shared argument groups -------------------------------------------------------------------
def _add_arch_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--hf-config", metavar="PATH", help="a Hugging Face config.json")
    group.add_argument("--arch", metavar="PATH", help="a moeplan architecture file (TOML/JSON)")
    group.add_argument("--preset", metavar="NAME", help="a built-in shape (arch --list-presets)")


def resolve_arch(args: argparse.Namespace) -> Any:
    """The ArchSpec named by exactly one of --hf-config, --arch or --preset."""
    if args.hf_config:
        from scaling.hf_config import load_hf_config

        return load_hf_config(args.hf_config)
    if args.arch:
        from scaling.arch import load_arch_file

        return load_arch_file(args.arch)
    from scaling.presets import get_preset

    return get_preset(args.preset)


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


# --- command: arch ------------------------------------------------------------------------------
def _command_arch(args: argparse.Namespace) -> None:
    from scaling.presets import get_preset, preset_names

    if args.list_presets:
        if args.json:
            _print_json(preset_names())
            return
        from search.report import print_arch_table

        print_arch_table([get_preset(name) for name in preset_names()], args.precision)
        return
    if not (args.hf_config or args.arch or args.preset):
        raise UserError("give one of --hf-config PATH, --arch PATH or --preset NAME")
    spec = resolve_arch(args)
    if args.to_hf_config:
        from scaling.hf_config import to_hf_config

        _write_text(args.to_hf_config, json.dumps(to_hf_config(spec), indent=2) + "\n")
        print(f"wrote {args.to_hf_config}", file=sys.stderr)
        return
    from scaling.accounting import summary

    if args.json:
        _print_json(summary(spec, args.precision))
    else:
        from search.report import print_arch_table

        print_arch_table([spec], args.precision)


def _write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"cannot write {path!r}: the folder {directory!r} does not exist")
    with open(path, "w") as handle:
        handle.write(text)


# --- command: bench ----------------------------------------------------------------------------
def _command_bench(args: argparse.Namespace) -> None:
    spec = resolve_arch(args)
    if args.mode == "train":
        from scaling.bench import bench_train

        result = bench_train(
            spec,
            steps=args.steps,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            dtype=args.dtype,
            device=args.device,
            dispatch=args.dispatch,
        )
        if args.json:
            _print_json(result)
            return
        from search.report import human_bytes, print_table

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
    from scaling.bench_infer import bench_infer

    result = bench_infer(
        spec,
        backend=args.backend,
        precision=args.precision,
        prompt_tokens=args.prompt_tokens,
        decode_tokens=args.decode_tokens,
        device=args.device,
        repeats=args.repeats,
    )
    if args.json:
        _print_json(result)
        return
    from search.report import human_bytes, print_table

    print_table(
        f"Inference: {spec.name or 'arch'} ({result['backend']}, {result['precision']})",
        ["prefill ms (median)", "decode tokens/s (median)", "peak memory"],
        [
            [
                f"{result['prefill_ms']:.2f}",
                f"{result['decode_tokens_per_s']:.1f}",
                human_bytes(result["peak_memory_bytes"]),
            ]
        ],
    )


# --- command: train ----------------------------------------------------------------------------
def _command_train(args: argparse.Namespace) -> None:
    from scaling.data import prepare_corpus
    from scaling.train import TrainConfig, Trainer

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
        _print_json(
            {
                "final_train_loss": result.final_train_loss,
                "final_val_loss": result.final_val_loss,
                "tokens": result.tokens,
                "elapsed_s": result.elapsed_s,
                "resumed_from_step": result.resumed_from_step,
                "history": result.history,
            }
        )


# --- command: fit ------------------------------------------------------------------------------
def read_table(path: str) -> Any:
    """A CSV or Parquet file as a DataFrame, with one-line errors."""
    import pandas as pd

    if not os.path.isfile(path):
        raise UserError(f"data file {path!r} does not exist")
    try:
        if path.endswith(".parquet"):
            return pd.read_parquet(path)
        if path.endswith(".csv"):
            return pd.read_csv(path)
    except Exception as error:  # pandas raises many types for a malformed file
        raise UserError(f"cannot read {path!r}: {_one_line(error)}") from None
    raise UserError(f"data file {path!r} must end in .csv or .parquet")


def _command_fit(args: argparse.Namespace) -> None:
    from scaling.fit import fit_law, select_checkpoints

    if (args.data is None) == (args.store is None):
        raise UserError("give exactly one of DATA (a .csv or .parquet file) or --store URL")
    if args.store is not None:
        from scaling.store import fit_frame

        frame = fit_frame(args.store)
        if frame.empty:
            raise UserError(f"store {args.store!r} has no finished runs to fit")
    else:
        frame = read_table(args.data)
    if args.tokens_from_compute:
        if not {"C", "N"} <= set(frame.columns):
            raise UserError("--tokens-from-compute needs columns C and N")
        frame["D"] = frame["C"] / (6 * frame["N"])
    frame = select_checkpoints(frame, args.checkpoints)
    fit = fit_law(frame, args.law, delta=args.delta, bootstrap=args.bootstrap, seed=args.seed, workers=args.workers)
    document = fit.to_dict()
    document.pop("bootstrap", None)
    document["predictions"] = None
    if args.predict:
        document["predictions"] = [float(x) for x in fit.predict(read_table(args.predict))]
    isoflop = None
    if args.isoflop or args.plot:
        from scaling.isoflop import isoflop_analysis

        try:
            isoflop = isoflop_analysis(frame, skip_invalid=not args.isoflop)
            document["isoflop"] = isoflop.to_dict()
        except UserError as error:
            if args.isoflop:
                raise
            print(f"note: no isoFLOP plot: {error}", file=sys.stderr)
    if args.out:
        _write_text(args.out, fit.to_json() + "\n")
    if args.plot:
        from scaling.plots import write_fit_plots

        for path in write_fit_plots(frame, fit, args.plot, isoflop):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        _print_json(document)
    else:
        print(fit.summary())


# --- commands: predict and devices --------------------------------------------------------------
def _command_predict(args: argparse.Namespace) -> None:
    from search.cost import predict, to_json_ready
    from search.devices import get_device

    spec = resolve_arch(args)
    device = get_device(args.device)
    prediction = to_json_ready(predict(spec, device, args.precision, args.prompt_tokens, args.context_tokens))
    if args.json:
        _print_json(prediction)
        return
    from search.report import human_bytes, print_table

    print_table(
        f"{spec.name or 'arch'} on {device.name} ({args.precision})",
        ["prefill ms", "decode tok/s", "weights", "KV cache", "peak memory", "usable", "fits"],
        [
            [
                f"{prediction['prefill_ms']:.1f}",
                f"{prediction['decode_tokens_per_s']:.1f}",
                human_bytes(prediction["weight_bytes"]),
                human_bytes(prediction["kv_cache_bytes"]),
                human_bytes(prediction["peak_memory_bytes"]),
                human_bytes(prediction["usable_memory_bytes"]),
                "yes" if prediction["fits_in_memory"] else "NO",
            ]
        ],
    )


def _command_devices_list(args: argparse.Namespace) -> None:
    from search.devices import list_devices

    devices = [d.summary() for d in list_devices()]
    if args.json:
        _print_json(devices)
        return
    from search.report import human_bytes, print_table

    print_table(
        "Device profiles",
        ["name", "usable / DRAM", "bandwidth", "fp16 compute", "measured fields"],
        [
            [
                d["name"],
                f"{human_bytes(d['usable_bytes'])} / {human_bytes(d['dram_bytes'])}",
                f"{d['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s",
                f"{d['compute_flops_fp16'] / 1e12:.2f} TFLOP/s",
                len(d["measured"]),
            ]
            for d in devices
        ],
    )


def _command_devices_calibrate(args: argparse.Namespace) -> None:
    from search.devices import save_user_profile

    if args.measurements:
        from search.calibrate import calibrate
        from search.devices import get_device

        if not args.base:
            raise UserError("--measurements needs --base DEVICE, the profile to calibrate")
        frame = read_table(args.measurements)
        if "arch" not in frame.columns:
            raise UserError("measurements need an 'arch' column (a preset name or an --arch file path)")
        specs = [_arch_from_reference(str(reference)) for reference in frame["arch"]]
        result = calibrate(
            get_device(args.base), specs, frame, name=args.name, source=f"calibrated on {args.measurements}"
        )
    else:
        from search.host import calibrate_host

        result = calibrate_host(name=args.name, budget_s=args.budget_s)
    path = save_user_profile(result.profile)
    document = {**result.to_dict(), "path": str(path)}
    if args.json:
        _print_json(document)
    else:
        print(
            f"saved {path}: prefill MAPE {result.prefill_mape:.1%}, decode MAPE {result.decode_mape:.1%} "
            f"over {len(result.table)} measurements"
        )


def _arch_from_reference(reference: str) -> Any:
    from scaling.arch import load_arch_file
    from scaling.presets import get_preset

    return load_arch_file(reference) if reference.endswith((".toml", ".json")) else get_preset(reference)


# --- commands: sweep and runs -------------------------------------------------------------------
def _command_sweep_run(args: argparse.Namespace) -> None:
    from scaling.sweep import run_sweep
    from scaling.sweep_spec import load_sweep

    spec = load_sweep(args.spec)  # validated in full before anything runs
    summary = run_sweep(
        spec,
        args.store,
        workers=args.workers,
        executor=args.executor,
        ray_address=args.ray_address,
        retry_failed=args.retry_failed,
        quiet=args.quiet,
        checkpoint_dir=args.checkpoint_dir,
    )
    if args.json:
        _print_json(summary)
    if summary["failed"]:
        raise SystemExit(EXIT_RUNTIME_ERROR)


RUN_LIST_KEYS = (
    "id",
    "sweep",
    "status",
    "arch_name",
    "total_params",
    "active_params",
    "n_experts",
    "top_k",
    "granularity",
    "n_shared_experts",
    "tokens",
    "flops",
    "final_train_loss",
    "final_val_loss",
    "error",
)


def _command_runs_list(args: argparse.Namespace) -> None:
    from scaling.store import RunStore

    runs = [{k: r[k] for k in RUN_LIST_KEYS} for r in RunStore(args.store, create=False).runs(args.sweep)]
    if args.json:
        _print_json(runs)
        return
    from search.report import human_count, print_table

    print_table(
        "Runs",
        ["id", "sweep", "status", "arch", "total", "active", "tokens", "val loss"],
        [
            [
                r["id"],
                r["sweep"],
                r["status"],
                r["arch_name"],
                human_count(r["total_params"]),
                human_count(r["active_params"]),
                human_count(r["tokens"]),
                "-" if r["final_val_loss"] is None else f"{r['final_val_loss']:.4f}",
            ]
            for r in runs
        ],
    )


def _command_runs_show(args: argparse.Namespace) -> None:
    from scaling.store import RunStore

    store = RunStore(args.store, create=False)
    run = store.run(args.id)
    document = {
        **run,
        "config": json.loads(run["config"]),
        "metrics": store.metrics(run["id"]),
        "measurements": store.measurements(run["id"]),
    }
    if args.json:
        _print_json(document)
        return
    print(json.dumps({k: v for k, v in document.items() if k != "metrics"}, indent=2, default=str))
    for point in document["metrics"]:
        val = "" if point["val_loss"] is None else f" val {point['val_loss']:.4f}"
        print(f"step {point['step']:>6} tokens {point['tokens']:>10} train {point['train_loss']:.4f}{val}")


def _command_runs_prune(args: argparse.Namespace) -> None:
    from scaling.sweep import prune_sweep
    from scaling.sweep_spec import load_sweep

    spec = load_sweep(args.spec)
    removed = prune_sweep(spec, args.store, args.checkpoint_dir)
    if args.json:
        _print_json({"sweep": spec.name, "removed": removed})
    print(f"removed {len(removed)} stored runs that {args.spec} no longer produces", file=sys.stderr)


def _command_runs_export(args: argparse.Namespace) -> None:
    from scaling.store import fit_frame

    if not args.out.endswith((".csv", ".parquet")):
        raise UserError(f"--out must end in .csv or .parquet, got {args.out!r}")
    frame = fit_frame(args.store, finished_only=False)
    directory = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(directory):
        raise UserError(f"cannot write {args.out!r}: the folder {directory!r} does not exist")
    if args.out.endswith(".csv"):
        frame.to_csv(args.out, index=False)
    else:
        frame.to_parquet(args.out, index=False)
    print(f"wrote {len(frame)} runs to {args.out}", file=sys.stderr)


# --- command: plan -------------------------------------------------------------------------------
def _command_plan(args: argparse.Namespace) -> None:
    from scaling.fit import FitResult
    from search.devices import get_device
    from search.plan import PlanRequest, plan, write_outputs
    from search.space import SearchSpace

    if args.memory_gb is not None and not args.memory_gb > 0:
        raise UserError(f"--memory-gb must be positive, got {args.memory_gb}")
    space = SearchSpace.from_toml(args.space) if args.space else SearchSpace()
    space.precision = (args.precision,)
    space = space.validated()
    fit = None
    if args.fit:
        if not os.path.isfile(args.fit):
            raise UserError(f"fit file {args.fit!r} does not exist")
        with open(args.fit) as handle:
            fit = FitResult.from_json(handle.read())
    request = PlanRequest(
        device=get_device(args.device),
        memory_budget_bytes=None if args.memory_gb is None else args.memory_gb * 1e9,
        objectives=tuple(o.strip() for o in args.objectives.split(",") if o.strip()),
        fit=fit,
        trials=args.trials,
        train_tokens=args.train_tokens,
        prompt_tokens=args.prompt_tokens,
        context_tokens=args.context_tokens,
        space=space,
        storage=args.storage,
        study=args.study,
        seed=args.seed,
        exhaustive=args.exhaustive,
        max_decode_ms=args.max_decode_ms,
        max_active_params=args.max_active_params,
        max_weight_bytes=None if args.max_weight_gb is None else args.max_weight_gb * 1e9,
        measure=args.measure,
        measure_store=args.store,
    )
    document = plan(request)
    if args.out:
        for path in write_outputs(document, args.out):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        _print_json(document)
        return
    from search.report import pareto_table, print_table

    print_table(*pareto_table(document))


# --- command: serve ------------------------------------------------------------------------------
def _command_serve(args: argparse.Namespace) -> None:
    from search.service import serve

    print(f"serving the moeplan API on http://{args.host}:{args.port}/v1 (schema at /openapi.json)", file=sys.stderr)
    serve(args.host, args.port, args.store)


# --- command: demo ------------------------------------------------------------------------------
def _command_demo(args: argparse.Namespace) -> None:
    from search.demo import run_demo

    run_demo(args)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


# --- parser -------------------------------------------------------------------------------------
PRECISION_CHOICES = ("fp32", "bf16", "fp16", "int8", "int4")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="moeplan",
        description="Scaling laws and architecture search for on-device MoE language models.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    arch = commands.add_parser("arch", help="parameters, FLOPs and bytes of a shape")
    _add_arch_arguments(arch, required=False)
    arch.add_argument("--precision", choices=PRECISION_CHOICES, default="bf16")
    arch.add_argument("--json", action="store_true", help="print one JSON document")
    arch.add_argument("--list-presets", action="store_true", help="list the built-in shapes")
    arch.add_argument("--to-hf-config", metavar="OUT.json", help="write a Hugging Face config")
    arch.set_defaults(handler=_command_arch)

    bench = commands.add_parser("bench", help="measure training or inference on this machine")
    _add_arch_arguments(bench)
    bench.add_argument("--mode", choices=("train", "infer"), required=True)
    bench.add_argument("--steps", type=_positive_int, default=10, help="timed training steps")
    bench.add_argument("--batch-size", type=_positive_int, default=16)
    bench.add_argument("--seq-len", type=_positive_int, default=256)
    bench.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    bench.add_argument("--dispatch", choices=DISPATCH_MODES, default="auto")
    bench.add_argument("--backend", choices=("torch", "mlx"), default="torch")
    bench.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32")
    bench.add_argument("--prompt-tokens", type=_positive_int, default=128)
    bench.add_argument("--decode-tokens", type=_positive_int, default=32)
    bench.add_argument("--repeats", type=_positive_int, default=5)
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=_command_bench)

    train = commands.add_parser("train", help="train one proxy on real text")
    _add_arch_arguments(train)
    train.add_argument("--steps", type=_positive_int, default=200)
    train.add_argument("--batch-size", type=_positive_int, default=16)
    train.add_argument("--seq-len", type=_positive_int, default=256)
    train.add_argument("--lr", type=_positive_float, default=3e-3)
    train.add_argument("--warmup-steps", type=int, default=20)
    train.add_argument("--schedule", choices=("cosine", "wsd", "constant"), default="cosine")
    train.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--eval-interval", type=_positive_int, default=50)
    train.add_argument("--log-interval", type=_positive_int, default=10)
    train.add_argument("--checkpoint-interval", type=int, default=50)
    train.add_argument("--checkpoint-dir", metavar="DIR", help="checkpoint here; resume if present")
    train.add_argument("--corpus", default="shakespeare", help="'shakespeare' or a folder of text")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--jsonl", action="store_true", help="stream logged points as JSON lines")
    train.add_argument("--json", action="store_true", help="print the run summary as JSON")
    train.set_defaults(handler=_command_train)

    fit = commands.add_parser("fit", help="fit a scaling law to runs")
    fit.add_argument("data", metavar="DATA", nargs="?", help="CSV or Parquet with canonical columns")
    fit.add_argument("--store", default=None, help="fit the finished runs of a run store instead")
    fit.add_argument("--law", default="chinchilla", help="a law name, or auto")
    fit.add_argument("--bootstrap", type=int, default=0, metavar="B", help="bootstrap replicates")
    fit.add_argument("--predict", metavar="OTHER.csv", help="predict the loss of these rows")
    fit.add_argument("--out", metavar="FIT.json", help="save the fit")
    fit.add_argument("--plot", metavar="DIR", help="write the fit plots here")
    fit.add_argument("--json", action="store_true")
    fit.add_argument("--delta", type=_positive_float, default=1e-3, help="Huber threshold")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--workers", type=_positive_int, default=None)
    fit.add_argument(
        "--checkpoints",
        choices=("final", "all"),
        default="final",
        help="with a 'run' column: each run's final point, or all late checkpoints",
    )
    fit.add_argument("--tokens-from-compute", action="store_true", help="set D = C / (6 N)")
    fit.add_argument("--isoflop", action="store_true", help="also run the isoFLOP analysis")
    fit.set_defaults(handler=_command_fit)

    predict = commands.add_parser("predict", help="predicted latency and memory on a device")
    _add_arch_arguments(predict)
    predict.add_argument("--device", required=True, help="a device name (devices list) or profile path")
    predict.add_argument("--precision", choices=PRECISION_CHOICES, default="int4")
    predict.add_argument("--prompt-tokens", type=_positive_int, default=512)
    predict.add_argument("--context-tokens", type=_positive_int, default=None, help="default: the prompt")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(handler=_command_predict)

    devices = commands.add_parser("devices", help="device profiles")
    device_commands = devices.add_subparsers(dest="devices_command", metavar="COMMAND", parser_class=_Parser)
    device_commands.required = True
    listing = device_commands.add_parser("list", help="list the device profiles")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_command_devices_list)
    calibrate = device_commands.add_parser("calibrate", help="measure this machine, or fit to phone measurements")
    calibrate.add_argument("--name", default="host", help="name of the saved profile")
    calibrate.add_argument("--measurements", metavar="CSV", help="measurements taken on a real device")
    calibrate.add_argument("--base", metavar="DEVICE", help="the profile the measurements calibrate")
    calibrate.add_argument("--budget-s", type=_positive_float, default=55.0, help="time budget on this machine")
    calibrate.add_argument("--json", action="store_true")
    calibrate.set_defaults(handler=_command_devices_calibrate)

    sweep = commands.add_parser("sweep", help="run sweeps of proxy trainings")
    sweep_commands = sweep.add_subparsers(dest="sweep_command", metavar="COMMAND", parser_class=_Parser)
    sweep_commands.required = True
    sweep_run = sweep_commands.add_parser("run", help="run (or resume) a sweep spec")
    sweep_run.add_argument("spec", metavar="SPEC.toml")
    sweep_run.add_argument("--store", help="SQLAlchemy URL (default: runs/moeplan.sqlite or $MOEPLAN_STORE)")
    sweep_run.add_argument(
        "--workers", type=_positive_int, default=None, help="runs at once (default: 1; with Ray, every CPU)"
    )
    sweep_run.add_argument("--executor", choices=("local", "ray"), default="local")
    sweep_run.add_argument(
        "--ray-address", default=None, help="HOST:PORT, ray://HOST:PORT or auto (default: start Ray on this machine)"
    )
    sweep_run.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    sweep_run.add_argument("--checkpoint-dir", default=None, help="default: checkpoints/ beside the store")
    sweep_run.add_argument("--quiet", action="store_true", help="no live display (batch logs)")
    sweep_run.add_argument("--json", action="store_true")
    sweep_run.set_defaults(handler=_command_sweep_run)

    runs = commands.add_parser("runs", help="inspect and export the run store")
    runs_commands = runs.add_subparsers(dest="runs_command", metavar="COMMAND", parser_class=_Parser)
    runs_commands.required = True
    runs_list = runs_commands.add_parser("list", help="list runs")
    runs_list.add_argument("--store")
    runs_list.add_argument("--sweep", default=None)
    runs_list.add_argument("--json", action="store_true")
    runs_list.set_defaults(handler=_command_runs_list)
    runs_show = runs_commands.add_parser("show", help="one run with its loss curve")
    runs_show.add_argument("id")
    runs_show.add_argument("--store")
    runs_show.add_argument("--json", action="store_true")
    runs_show.set_defaults(handler=_command_runs_show)
    runs_export = runs_commands.add_parser("export", help="one row per run, canonical fit columns")
    runs_export.add_argument("--store")
    runs_export.add_argument("--out", required=True, metavar="FILE.csv|FILE.parquet")
    runs_export.set_defaults(handler=_command_runs_export)
    runs_prune = runs_commands.add_parser(
        "prune", help="delete a sweep's stored runs that its spec no longer produces (after a spec or default change)"
    )
    runs_prune.add_argument("spec", metavar="SPEC.toml")
    runs_prune.add_argument("--store")
    runs_prune.add_argument("--checkpoint-dir", default=None, help="default: checkpoints/ beside the store")
    runs_prune.add_argument("--json", action="store_true")
    runs_prune.set_defaults(handler=_command_runs_prune)

    planner = commands.add_parser("plan", help="Pareto-optimal shapes for a device memory budget")
    planner.add_argument("--device", required=True)
    planner.add_argument("--memory-gb", type=float, default=None, help="budget in 10^9 bytes (default: usable DRAM)")
    planner.add_argument("--precision", choices=PRECISION_CHOICES, default="int4")
    planner.add_argument(
        "--fit", metavar="FIT.json", help="a fit from moeplan fit --out (default: search/default_fit.json)"
    )
    planner.add_argument("--trials", type=_positive_int, default=500)
    planner.add_argument(
        "--objectives", default="loss,decode_ms", help="2 or 3 of loss,decode_ms,prefill_ms,active_flops"
    )
    planner.add_argument("--storage", default=None, help="Optuna storage: RDB URL or a journal file (*.log)")
    planner.add_argument("--study", default=None, help="study name (resumes it when it exists)")
    planner.add_argument("--exhaustive", action="store_true", help="enumerate the whole space (exact front)")
    planner.add_argument("--space", metavar="SPACE.toml", help="narrow or extend the search space")
    planner.add_argument("--measure", action="store_true", help="measure latency on this machine (cached per shape)")
    planner.add_argument("--store", default=None, help="run store caching measured shapes (with --measure)")
    planner.add_argument("--train-tokens", type=_positive_float, default=1e12, help="planned training tokens")
    planner.add_argument("--prompt-tokens", type=_positive_int, default=512)
    planner.add_argument("--context-tokens", type=_positive_int, default=2048)
    planner.add_argument("--max-decode-ms", type=_positive_float, default=None)
    planner.add_argument("--max-active-params", type=_positive_float, default=None)
    planner.add_argument("--max-weight-gb", type=_positive_float, default=None, help="bound on weight bytes alone")
    planner.add_argument("--seed", type=int, default=0)
    planner.add_argument("--out", metavar="DIR", help="write the front as CSV, --arch files, HF configs and a plot")
    planner.add_argument("--json", action="store_true")
    planner.set_defaults(handler=_command_plan)

    server = commands.add_parser("serve", help="serve the JSON API")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=_positive_int, default=8000)
    server.add_argument("--store", default=None, help="run store URL (jobs persist there)")
    server.set_defaults(handler=_command_serve)

    demo = commands.add_parser("demo", help="the end-to-end demo on the embedded defaults")
    demo.set_defaults(handler=_command_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moeplan`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        sys.stderr.write(f"error: {_one_line(error)}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return EXIT_RUNTIME_ERROR
    except BrokenPipeError:
        return 0
    except Exception as error:  # a run-time failure: one line, traceback only when asked
        if os.environ.get("MOEPLAN_DEBUG"):
            raise
        name = type(error).__name__
        hint = "set MOEPLAN_DEBUG=1 for a traceback"
        sys.stderr.write(f"error: {name}: {_one_line(error)} ({hint})\n")
        return EXIT_RUNTIME_ERROR
    return 0


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
