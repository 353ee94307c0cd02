"""``moeplan loss`` (ask the planner's law directly) and ``moeplan laws show|fit`` (its card)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from scaling.errors import UserError
from search.app.cli.common import (
    add_arch_arguments,
    check_output_file,
    positive_int,
    print_json,
    read_table,
    resolve_arch,
    seed_int,
    write_text,
)

PRECISION_FREE = ("fp32", "bf16", "fp16")
QUANT_METHODS = ("rtn", "gptq")


def _load_card(reference: str | None):
    from scaling.laws.card import load_card

    return load_card(reference)


def _loss_documents(card, frame, samples: int, seed: int, deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """One document per row; with a quantised scheme, also its penalty (median and 90% interval of
    the per-sample difference to the bf16 loss, the same parameter draws)."""
    import numpy as np

    loss, n_eq = card.predict_samples(frame, samples, seed, **deployment)
    documents = []
    lower, median, upper = np.quantile(loss, [0.05, 0.5, 0.95], axis=1)
    for row in range(len(loss)):
        documents.append(
            {
                "loss": float(median[row]),
                "loss_unit": str(card.unit),
                "dense_equivalent_params": float(np.median(n_eq[row])),
                "ci90": [float(lower[row]), float(upper[row])],
                "law_card": card.path or card.name,
            }
        )
    scheme = deployment.get("scheme")
    if scheme is not None and scheme.quantised_parts():
        plain, _ = card.predict_samples(frame, samples, seed)
        penalty = loss - plain
        low, mid, high = np.quantile(penalty, [0.05, 0.5, 0.95], axis=1)
        share = np.quantile(penalty / plain, [0.05, 0.5, 0.95], axis=1)
        for row, document in enumerate(documents):
            document["penalty"] = float(mid[row])
            document["penalty_ci90"] = [float(low[row]), float(high[row])]
            document["penalty_unit"] = str(card.unit)
            document["penalty_relative"] = float(share[1, row])  # a fraction of the bf16 loss
            document["penalty_relative_ci90"] = [float(share[0, row]), float(share[2, row])]
    return documents


def _deployment(args: argparse.Namespace, card, arch) -> dict[str, Any]:
    """The scheme the loss is asked at (``--scheme``, or the one ``--precision`` stands for)."""
    from scaling.shape.scheme import load_scheme, scheme_for_precision

    if args.scheme is not None and args.precision is not None:
        raise UserError("give --precision or --scheme, not both (a scheme says every part's precision)")
    precision = args.precision or "bf16"
    scheme = load_scheme(args.scheme) if args.scheme is not None else scheme_for_precision(precision)
    if scheme is None or not scheme.quantised_parts():
        return {"scheme": scheme}
    what = f"--scheme {args.scheme}" if args.scheme is not None else f"--precision {precision}"
    if arch is not None:
        scheme.check(arch, args.scheme)
    card.require_penalty(what, scheme.name if args.scheme is not None else precision)
    if arch is None:
        raise UserError(
            f"{what}: a penalty is spread over each model's parts, which --shapes does not give; "
            "ask one shape with --arch, --preset or --hf-config"
        )
    return {"scheme": scheme, "arch": arch, "method": args.quant_method}


def _command_loss(args: argparse.Namespace) -> None:
    import pandas as pd

    card = _load_card(args.law_card)
    if args.shapes:
        if args.hf_config or args.arch or args.preset or args.tokens is not None:
            raise UserError(
                "--shapes takes its sizes and tokens from the file; drop --arch, --preset, --hf-config and --tokens"
            )
        deployment = _deployment(args, card, None)
        frame = read_table(args.shapes)
        document = {
            "predictions": _loss_documents(card, frame, args.samples, args.seed, deployment),
            "loss_unit": str(card.unit),
            "law_card": card.path or card.name,
            "extrapolation": card.extrapolation(frame),
        }
    else:
        if not (args.hf_config or args.arch or args.preset):
            raise UserError("give one of --hf-config PATH, --arch PATH or --preset NAME (or --shapes FILE.csv)")
        if args.tokens is None:
            raise UserError(f"give --tokens D, the training tokens ({card.unit.token_name})")
        from scaling.shape.accounting import law_columns

        spec = resolve_arch(args)
        deployment = _deployment(args, card, spec)
        columns = {key: [float(value)] for key, value in law_columns(spec).items()}
        frame = pd.DataFrame({**columns, "D": [args.tokens]})
        scheme = deployment["scheme"]
        quantised = scheme is not None and bool(scheme.quantised_parts())
        document = {
            **_loss_documents(card, frame, args.samples, args.seed, deployment)[0],
            "tokens": args.tokens,
            "tokens_unit": card.unit.token_name,
            "precision": args.precision or ("bf16" if args.scheme is None else None),
            "scheme": scheme.name if scheme is not None else None,
            "extrapolation": card.extrapolation(frame, with_penalty=quantised),
        }
        if quantised:
            document["quant_method"] = args.quant_method
    if args.json:
        print_json(document)
        return
    rows = document["predictions"] if args.shapes else [document]
    for index, row in enumerate(rows):
        lo, hi = row["ci90"]
        prefix = f"row {index}: " if args.shapes else ""
        penalty = ""
        if "penalty" in row:
            low, high = row["penalty_ci90"]
            penalty = (
                f"; at {document['scheme']} ({args.quant_method}) {row['penalty']:+.3g} {row['penalty_unit']} "
                f"(90% {low:+.3g} to {high:+.3g}), {row['penalty_relative']:.2%} of the loss, over bf16"
            )
        print(
            f"{prefix}loss {row['loss']:.4f} {row['loss_unit']} (90% {lo:.4f}-{hi:.4f}), "
            f"dense-equivalent {row['dense_equivalent_params']:.4g} parameters{penalty}"
        )
    _warn_extrapolation(document["extrapolation"], args.max_extrapolation)


def _warn_extrapolation(report: dict[str, dict[str, float]], limit: float) -> None:
    for term, ratios in report.items():
        for variable, ratio in ratios.items():
            if ratio > limit:
                print(
                    f"warning: term {term!r} extrapolates {variable} {ratio:.3g}x beyond its data",
                    file=sys.stderr,
                )


def _tokens(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of tokens, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of tokens, got {text}")
    return value


def _command_laws_show(args: argparse.Namespace) -> None:
    card = _load_card(args.card)
    if args.json:
        print_json(card.to_dict() if args.replicates else _without_replicates(card.to_dict()))
        return
    print(card.summary())


def _without_replicates(document: dict[str, Any]) -> dict[str, Any]:
    for term in document["terms"].values():
        for form in term["forms"].values():
            form.pop("replicates", None)
    return document


def _command_laws_fit(args: argparse.Namespace) -> None:
    from scaling.laws import datasets
    from scaling.laws.build_card import build_card

    check_output_file(args.out, "--out")  # before fitting every term
    base = datasets.overtraining_runs(args.data_dir) if args.base == "overtraining" else read_table(args.base)
    routed = None
    if args.routed != "none":
        routed = (
            datasets.routed_moe_runs(args.data_dir, checkpoints="all")
            if args.routed == "routed_moe"
            else read_table(args.routed)
        )
    sweep, quantization = None, None
    if args.sweep != "none":
        from scaling.runs.frames import fit_frame

        frame = fit_frame(_store_url(args.sweep))
        sweep = frame[frame["stage"] == "main"] if "stage" in frame.columns else frame
    measurements = args.sweep if args.quantization == "sweep" else args.quantization
    if measurements != "none":  # the store's quantisation measurements, when it has any
        from scaling.runs.frames import quantization_frame

        quantization = quantization_frame(_store_url(measurements))
        if quantization.empty:
            print(f"no quantisation measurements in {measurements}: the card has no penalty term", file=sys.stderr)
    check = datasets.chinchilla_points(args.data_dir) if datasets.available("chinchilla", args.data_dir) else None
    card = build_card(
        base,
        routed,
        sweep,
        name=args.name,
        bootstrap=args.bootstrap,
        seed=args.seed,
        check=check,
        sources={
            "base": args.base_source or _source(args.base, "overtraining"),
            "expansion": args.routed_source or _source(args.routed, "routed_moe"),
            "sweep": args.sweep_source or f"proxy sweep {args.sweep}",
            "quantization": f"quantisation measurements (proxies quantised post-training) in {measurements}",
        },
        quantization=quantization,
        penalty_form=args.penalty_form,
        penalty_min_tokens_per_param=args.penalty_min_tokens_per_param,
    )
    write_text(args.out, card.to_json() + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        print_json(_without_replicates(card.to_dict()))
    else:
        print(card.summary())


def _store_url(reference: str) -> str:
    return reference if "://" in reference else f"sqlite:///{reference}"


def _source(reference: str, name: str) -> str:
    from scaling.laws.datasets import get_dataset

    return get_dataset(name).origin if reference == name else reference


def register(commands: argparse._SubParsersAction) -> None:
    loss = commands.add_parser("loss", help="the planner's law: predicted loss of a shape, with its interval")
    add_arch_arguments(loss, required=False)
    loss.add_argument("--shapes", metavar="FILE.csv", help="many shapes: columns N, N_total, E, G, k, S, D")
    loss.add_argument("--tokens", type=_tokens, default=None, help="training tokens D, in the card's tokens")
    loss.add_argument(
        "--precision",
        default=None,
        choices=("fp32", "bf16", "fp16", "int8", "int4"),
        help="deployment precision (default bf16; int8 and int4 are the int8 and int4-g32 schemes)",
    )
    loss.add_argument(
        "--scheme", default=None, metavar="NAME|FILE", help="a precision scheme (built-in name or TOML file)"
    )
    loss.add_argument(
        "--quant-method", choices=QUANT_METHODS, default="rtn", help="how a quantised deployment is made (rtn, gptq)"
    )
    loss.add_argument("--law-card", default=None, metavar="CARD", help="a card file or built-in name (default)")
    loss.add_argument("--samples", type=positive_int, default=200, help="parameter samples for the interval")
    loss.add_argument("--seed", type=seed_int, default=0, help="seed of the parameter samples")
    loss.add_argument(
        "--max-extrapolation", type=float, default=100.0, help="warn when a term reaches this far past its data"
    )
    loss.add_argument("--json", action="store_true", help="print one JSON document")
    loss.set_defaults(handler=_command_loss)

    laws = commands.add_parser("laws", help="the planner's law card")
    law_commands = laws.add_subparsers(dest="laws_command", metavar="COMMAND")
    law_commands.required = True
    show = law_commands.add_parser("show", help="each term: source, range, parameters with CIs, backtests")
    show.add_argument("card", nargs="?", default=None, metavar="CARD", help="a card file or built-in name")
    show.add_argument("--json", action="store_true", help="print the card as JSON")
    show.add_argument("--replicates", action="store_true", help="with --json: include the bootstrap replicates")
    show.set_defaults(handler=_command_laws_show)
    fit = law_commands.add_parser("fit", help="fit a card's terms from data (your own sweep store included)")
    fit.add_argument("--out", required=True, metavar="CARD.json", help="where to write the card")
    fit.add_argument("--name", default="custom", help="the card's name")
    fit.add_argument("--base", default="overtraining", help="dense runs for the base law: overtraining or a CSV")
    fit.add_argument("--routed", default="routed_moe", help="routed runs for the E term: routed_moe, a CSV, or none")
    fit.add_argument(
        "--sweep",
        default="runs/reference/reference.sqlite",
        help="a sweep store (path or URL) for the G, top-k and shared terms, or none",
    )
    fit.add_argument(
        "--quantization",
        default="sweep",
        metavar="STORE",
        help="a store whose quantisation measurements fit the penalty term (default: the --sweep store; none: "
        "no penalty term, and the card refuses int8/int4)",
    )
    fit.add_argument(
        "--penalty-form", default="auto", metavar="FORM", help="the penalty's form (auto: best out of sample)"
    )
    fit.add_argument(
        "--penalty-min-tokens-per-param",
        type=float,
        default=50.0,
        metavar="R",
        help="fit the penalty on runs trained on at least R tokens per active parameter (the over-trained end)",
    )
    fit.add_argument("--base-source", default=None, help="describe the base data (default: its origin)")
    fit.add_argument("--routed-source", default=None, help="describe the routed data")
    fit.add_argument("--sweep-source", default=None, help="describe the sweep")
    fit.add_argument("--data-dir", default=None, help="where the published datasets are (default: MOEPLAN_DATA)")
    fit.add_argument("--bootstrap", type=positive_int, default=200, help="bootstrap replicates per term")
    fit.add_argument("--seed", type=seed_int, default=0, help="seeds the bootstrap")
    fit.add_argument("--json", action="store_true", help="print the card as JSON")
    fit.set_defaults(handler=_command_laws_fit)
