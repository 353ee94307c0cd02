"""``moeplan sweep`` and ``moeplan runs``: run sweeps, inspect and export the run store."""

from __future__ import annotations

import argparse
import json
import sys

from scaling.errors import UserError
from search.app.cli.common import EXIT_RUNTIME_ERROR, Parser, check_output_file, positive_int, print_json


# --- commands: sweep and runs -------------------------------------------------------------------
def _command_sweep_run(args: argparse.Namespace) -> None:
    from scaling.runs.spec import load_sweep
    from scaling.runs.sweep import run_sweep

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
        print_json(summary)
    if summary["failed"] or summary.get("quantize_failed"):
        raise SystemExit(EXIT_RUNTIME_ERROR)


def _command_runs_list(args: argparse.Namespace) -> None:
    from scaling.runs.store import RunStore, run_listing

    runs = [run_listing(r) for r in RunStore(args.store, create=False, read_only=True).runs(args.sweep)]
    if args.json:
        print_json(runs)
        return
    from search.app.report import human_count, print_table, shape_label

    print_table(
        "Runs (losses in nats/byte)",
        ["id", "sweep", "stage", "status", "shape", "seed", "lr", "active", "total", "tokens", "val loss", "routing"],
        [
            [
                r["id"],
                r["sweep"],
                r["stage"] or "main",
                r["status"],
                shape_label(r),
                "-" if r["seed"] is None else str(r["seed"]),
                "-" if r["lr"] is None else f"{r['lr']:.2g}",
                human_count(r["active_params"]),
                human_count(r["total_params"]),
                human_count(r["tokens"]),
                "-" if r["final_val_loss"] is None else f"{r['final_val_loss']:.4f}",
                {None: "-", True: "COLLAPSED", False: "ok"}[r["collapsed"]],
            ]
            for r in runs
        ],
    )


def _command_runs_show(args: argparse.Namespace) -> None:
    from scaling.runs.store import RunStore

    store = RunStore(args.store, create=False, read_only=True)
    run = store.run(args.id)
    document = {
        **run,
        "config": json.loads(run["config"]),
        "metrics": store.metrics(run["id"]),
        "routing": store.routing(run["id"]),
        "measurements": store.measurements(run["id"]),
        "quantization": store.quantizations(run["id"]),
    }
    if args.json:
        print_json(document)
        return
    from search.app.report import print_run

    print_run(document)


def _command_runs_prune(args: argparse.Namespace) -> None:
    from scaling.runs.spec import load_sweep
    from scaling.runs.sweep import prune_sweep

    spec = load_sweep(args.spec)
    removed = prune_sweep(spec, args.store, args.checkpoint_dir)
    if args.json:
        print_json({"sweep": spec.name, "removed": removed})
    print(f"removed {len(removed)} stored runs that {args.spec} no longer produces", file=sys.stderr)


def _command_runs_export(args: argparse.Namespace) -> None:
    from scaling.runs.frames import aggregate_seeds, fit_frame

    if not args.out.endswith((".csv", ".parquet")):
        raise UserError(f"--out must end in .csv or .parquet, got {args.out!r}")
    check_output_file(args.out, "--out")
    frame = fit_frame(args.store, finished_only=args.aggregate)
    if args.aggregate:
        frame = aggregate_seeds(frame)
    if args.out.endswith(".csv"):
        frame.to_csv(args.out, index=False)
    else:
        frame.to_parquet(args.out, index=False)
    what = "shapes and budgets (mean, SD and count over seeds)" if args.aggregate else "runs"
    print(f"wrote {len(frame)} {what} to {args.out}", file=sys.stderr)


def register(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser("sweep", help="run sweeps of proxy trainings")
    sweep_commands = sweep.add_subparsers(dest="sweep_command", metavar="COMMAND", parser_class=Parser)
    sweep_commands.required = True
    sweep_run = sweep_commands.add_parser("run", help="run (or resume) a sweep spec")
    sweep_run.add_argument("spec", metavar="SPEC.toml")
    sweep_run.add_argument("--store", help="SQLAlchemy URL (default: runs/moeplan.sqlite or $MOEPLAN_STORE)")
    sweep_run.add_argument(
        "--workers", type=positive_int, default=None, help="runs at once (default: 1; with Ray, every CPU)"
    )
    sweep_run.add_argument(
        "--executor", choices=("local", "ray"), default="local", help="local processes, or a Ray cluster"
    )
    sweep_run.add_argument(
        "--ray-address", default=None, help="HOST:PORT, ray://HOST:PORT or auto (default: start Ray on this machine)"
    )
    sweep_run.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    sweep_run.add_argument("--checkpoint-dir", default=None, help="default: checkpoints/ beside the store")
    sweep_run.add_argument("--quiet", action="store_true", help="no live display (batch logs)")
    sweep_run.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    sweep_run.set_defaults(handler=_command_sweep_run)

    runs = commands.add_parser("runs", help="inspect and export the run store")
    runs_commands = runs.add_subparsers(dest="runs_command", metavar="COMMAND", parser_class=Parser)
    runs_commands.required = True
    runs_list = runs_commands.add_parser("list", help="list runs")
    runs_list.add_argument("--store", help="run store URL (default: runs/moeplan.sqlite or $MOEPLAN_STORE)")
    runs_list.add_argument("--sweep", default=None, help="only this sweep's runs")
    runs_list.add_argument("--json", action="store_true", help="print one JSON document")
    runs_list.set_defaults(handler=_command_runs_list)
    runs_show = runs_commands.add_parser("show", help="one run with its loss curve")
    runs_show.add_argument("id")
    runs_show.add_argument("--store", help="run store URL (default: runs/moeplan.sqlite or $MOEPLAN_STORE)")
    runs_show.add_argument("--json", action="store_true", help="print one JSON document")
    runs_show.set_defaults(handler=_command_runs_show)
    runs_export = runs_commands.add_parser("export", help="one row per run, canonical fit columns")
    runs_export.add_argument("--store", help="run store URL (default: runs/moeplan.sqlite or $MOEPLAN_STORE)")
    runs_export.add_argument(
        "--out", required=True, metavar="FILE.csv|FILE.parquet", help="the file to write (its folder must exist)"
    )
    runs_export.add_argument(
        "--aggregate",
        action="store_true",
        help="one row per shape and budget: mean, SD and count of the final loss over seeds (finished runs)",
    )
    runs_export.set_defaults(handler=_command_runs_export)
    runs_prune = runs_commands.add_parser(
        "prune", help="delete a sweep's stored runs that its spec no longer produces (after a spec or default change)"
    )
    runs_prune.add_argument("spec", metavar="SPEC.toml")
    runs_prune.add_argument("--store", help="run store URL (default: runs/moeplan.sqlite or $MOEPLAN_STORE)")
    runs_prune.add_argument("--checkpoint-dir", default=None, help="default: checkpoints/ beside the store")
    runs_prune.add_argument("--json", action="store_true", help="print one JSON document")
    runs_prune.set_defaults(handler=_command_runs_prune)
