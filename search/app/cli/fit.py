"""``moeplan fit``: fit a scaling law to runs."""

from __future__ import annotations

import argparse
import sys

from scaling.checks import argument
from scaling.errors import UserError
from search.app.cli.common import (
    check_output_file,
    check_output_folder,
    positive_int,
    print_json,
    read_table,
    seed_int,
    write_text,
)
from search.app.cli.progress import StderrProgress


def _command_fit(args: argparse.Namespace) -> None:
    from scaling.laws.fit import fit_law, select_checkpoints

    if (args.data is None) == (args.store is None):
        raise UserError("give exactly one of DATA (a .csv or .parquet file) or --store URL")
    # every input and output checked before the fit starts (a bootstrap can take minutes)
    if args.law != "auto":
        from scaling.laws.registry import get_law

        get_law(args.law)
    if args.out:
        check_output_file(args.out, "--out")
    if args.plot:
        check_output_folder(args.plot, "--plot")
    to_predict = read_table(args.predict) if args.predict else None
    if args.store is not None:
        from scaling.runs.frames import fit_frame

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
    progress = StderrProgress(enabled=not (args.json or args.quiet))
    fit = fit_law(
        frame,
        args.law,
        delta=args.delta,
        bootstrap=args.bootstrap,
        seed=args.seed,
        workers=args.workers,
        progress=progress,
    )
    if args.json and not args.quiet:  # the table prints them; under --json they go to stderr as well
        for warning in fit.extra.get("warnings", []):
            sys.stderr.write(f"warning: {warning}\n")
    document = fit.to_dict()
    document.pop("bootstrap", None)
    document["predictions"] = None
    if to_predict is not None:
        document["predictions"] = [float(x) for x in fit.predict(to_predict)]
    isoflop = None
    if args.isoflop:  # only when asked: the plot is drawn only then, too
        from scaling.laws.isoflop import isoflop_analysis

        isoflop = isoflop_analysis(frame)
        document["isoflop"] = isoflop.to_dict()
    if args.out:
        write_text(args.out, fit.to_json() + "\n")
    if args.plot:
        from scaling.laws.plots import write_fit_plots

        for path in write_fit_plots(frame, fit, args.plot, isoflop):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print_json(document)
        return
    print(fit.summary())
    if to_predict is not None:
        _print_predictions(fit, to_predict, document["predictions"], args.predict)


def _print_predictions(fit, rows, predictions: list[float], origin: str) -> None:
    """The predicted loss of each ``--predict`` row, beside the columns the law reads."""
    from search.app.report import print_table

    columns = [c for c in fit.law_object.columns if c in rows.columns]
    unit = fit.extra.get("loss_unit") or "unit not given"
    print_table(
        f"Predictions for {origin} ({fit.law}; loss in {unit})",
        ["row", *columns, "predicted loss"],
        [
            [index, *(f"{rows[c].iloc[index]:.4g}" for c in columns), f"{value:.4f}"]
            for index, value in enumerate(predictions)
        ],
    )


def _law_names() -> list[str]:
    from scaling.laws.registry import LAWS

    return [*LAWS, "auto"]


def register(commands: argparse._SubParsersAction) -> None:
    laws = _law_names()
    fit = commands.add_parser(
        "fit",
        help="fit a scaling law to runs",
        description=f"Fit a scaling law with a Huber loss on log residuals. Laws: {', '.join(laws)}.",
    )
    fit.add_argument("data", metavar="DATA", nargs="?", help="CSV or Parquet with canonical columns")
    fit.add_argument("--store", default=None, help="fit the finished runs of a run store instead")
    fit.add_argument(
        "--law",
        default="chinchilla",
        metavar="NAME",
        help=f"one of {', '.join(laws)} (auto: the best by rolling-origin backtests)",
    )
    fit.add_argument(
        "--bootstrap",
        type=argument("bootstrap", integer=True, minimum=0),
        default=0,
        metavar="B",
        help="bootstrap replicates for 95%% intervals (0: none)",
    )
    fit.add_argument("--predict", metavar="OTHER.csv", help="predict the loss of these rows (printed, or in the JSON)")
    fit.add_argument("--out", metavar="FIT.json", help="save the fit (its folder must exist)")
    fit.add_argument("--plot", metavar="DIR", help="write the fit plots here (DIR is created)")
    fit.add_argument("--json", action="store_true", help="print one JSON document")
    fit.add_argument("--quiet", action="store_true", help="no progress on stderr")
    fit.add_argument(
        "--delta", type=argument("delta", above=0), default=1e-3, help="Huber threshold on log residuals (at most 10)"
    )
    fit.add_argument("--seed", type=seed_int, default=0, help="seeds the bootstrap")
    fit.add_argument("--workers", type=positive_int, default=None, help="bootstrap processes (default: every core)")
    fit.add_argument(
        "--checkpoints",
        choices=("final", "all"),
        default="final",
        help="with a 'run' column: each run's final point, or all late checkpoints",
    )
    fit.add_argument("--tokens-from-compute", action="store_true", help="set D = C / (6 N)")
    fit.add_argument("--isoflop", action="store_true", help="also run the isoFLOP analysis (and draw isoflop.png)")
    fit.set_defaults(handler=_command_fit)
