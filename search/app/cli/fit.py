"""``moeplan fit``: fit a scaling law to runs."""

from __future__ import annotations

import argparse
import sys

from scaling.errors import UserError
from search.app.cli.common import positive_float, positive_int, print_json, read_table, write_text


def _command_fit(args: argparse.Namespace) -> None:
    from scaling.laws.fit import fit_law, select_checkpoints

    if (args.data is None) == (args.store is None):
        raise UserError("give exactly one of DATA (a .csv or .parquet file) or --store URL")
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
    fit = fit_law(frame, args.law, delta=args.delta, bootstrap=args.bootstrap, seed=args.seed, workers=args.workers)
    document = fit.to_dict()
    document.pop("bootstrap", None)
    document["predictions"] = None
    if args.predict:
        document["predictions"] = [float(x) for x in fit.predict(read_table(args.predict))]
    isoflop = None
    if args.isoflop or args.plot:
        from scaling.laws.isoflop import isoflop_analysis

        try:
            isoflop = isoflop_analysis(frame, skip_invalid=not args.isoflop)
            document["isoflop"] = isoflop.to_dict()
        except UserError as error:
            if args.isoflop:
                raise
            print(f"note: no isoFLOP plot: {error}", file=sys.stderr)
    if args.out:
        write_text(args.out, fit.to_json() + "\n")
    if args.plot:
        from scaling.laws.plots import write_fit_plots

        for path in write_fit_plots(frame, fit, args.plot, isoflop):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print_json(document)
    else:
        print(fit.summary())


def register(commands: argparse._SubParsersAction) -> None:
    fit = commands.add_parser("fit", help="fit a scaling law to runs")
    fit.add_argument("data", metavar="DATA", nargs="?", help="CSV or Parquet with canonical columns")
    fit.add_argument("--store", default=None, help="fit the finished runs of a run store instead")
    fit.add_argument("--law", default="chinchilla", help="a law name, or auto")
    fit.add_argument("--bootstrap", type=int, default=0, metavar="B", help="bootstrap replicates")
    fit.add_argument("--predict", metavar="OTHER.csv", help="predict the loss of these rows")
    fit.add_argument("--out", metavar="FIT.json", help="save the fit")
    fit.add_argument("--plot", metavar="DIR", help="write the fit plots here")
    fit.add_argument("--json", action="store_true")
    fit.add_argument("--delta", type=positive_float, default=1e-3, help="Huber threshold")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--workers", type=positive_int, default=None)
    fit.add_argument(
        "--checkpoints",
        choices=("final", "all"),
        default="final",
        help="with a 'run' column: each run's final point, or all late checkpoints",
    )
    fit.add_argument("--tokens-from-compute", action="store_true", help="set D = C / (6 N)")
    fit.add_argument("--isoflop", action="store_true", help="also run the isoFLOP analysis")
    fit.set_defaults(handler=_command_fit)
