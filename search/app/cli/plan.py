"""``moeplan plan``: Pareto-optimal shapes for a device memory budget."""

from __future__ import annotations

import argparse
import os
import sys

from scaling.checks import argument
from scaling.errors import UserError
from search.app.cli.common import (
    PRECISION_CHOICES,
    check_output_folder,
    positive_float,
    print_json,
    seed_int,
)


# --- command: plan -------------------------------------------------------------------------------
def _command_plan(args: argparse.Namespace) -> None:
    from scaling.laws.card import load_card
    from scaling.laws.fit import FitResult
    from search.app.measure import measured_latency
    from search.device.profiles import get_device
    from search.plan.loss_model import FitLossModel
    from search.plan.outputs import write_outputs
    from search.plan.planner import plan
    from search.plan.request import PlanRequest
    from search.plan.space import SearchSpace

    if args.out:
        check_output_folder(args.out, "--out")  # before the search, not after it
    space = SearchSpace.from_toml(args.space) if args.space else SearchSpace()
    space.precision = (args.precision,)
    if args.schemes is not None:
        names = tuple(name.strip() for name in args.schemes.split(","))
        if not all(names):
            raise UserError(f"--schemes {args.schemes!r}: give comma-separated scheme names or files, none empty")
        space.schemes = names
    space = space.validated()
    if args.fit and args.law_card:
        raise UserError("give one of --fit FIT.json or --law-card CARD, not both")
    loss_model = load_card(args.law_card) if args.law_card else None
    if args.fit:
        if not os.path.isfile(args.fit):
            raise UserError(f"fit file {args.fit!r} does not exist")
        with open(args.fit) as handle:
            loss_model = FitLossModel(FitResult.from_json(handle.read()), args.fit)
    request = PlanRequest(
        device=get_device(args.device),
        memory_budget_bytes=None if args.memory_gb is None else args.memory_gb * 1e9,
        objectives=tuple(o.strip() for o in args.objectives.split(",") if o.strip()),
        loss_model=loss_model,
        samples=args.samples,
        min_p_front=args.min_p_front,
        max_unvalidated_share=args.max_unvalidated_share,
        max_extrapolation=args.max_extrapolation,
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
        latency_oracle=measured_latency(args.store) if args.measure else None,
        backend=args.backend,
        quant_method=args.quant_method,
    )
    document = plan(request)
    for warning in document["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.out:
        for path in write_outputs(document, args.out):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print_json(document)
        return
    from search.app.report import pareto_table, print_table

    print_table(*pareto_table(document))


def register(commands: argparse._SubParsersAction) -> None:
    planner = commands.add_parser(
        "plan",
        help="Pareto-optimal shapes for a device memory budget",
        description="Search the space for the shapes on the Pareto front of the objectives, within the budget.",
    )
    planner.add_argument("--device", required=True, help="a device profile name (see 'moeplan devices list')")
    planner.add_argument(
        "--memory-gb",
        type=argument("memory_gb", above=0),
        default=None,
        help="bound on peak memory, in 10^9 bytes (default: the device's usable DRAM)",
    )
    planner.add_argument("--precision", choices=PRECISION_CHOICES, default="int4", help="weight precision")
    planner.add_argument(
        "--schemes",
        metavar="A,B,...",
        default=None,
        help="search these precision schemes (built-in names or TOML files) instead of --precision alone",
    )
    planner.add_argument(
        "--quant-method", choices=("rtn", "gptq"), default="rtn", help="how quantised deployments are made"
    )
    planner.add_argument(
        "--backend", choices=("cpu", "gpu", "npu"), default=None, help="the device's backend (default: recommended)"
    )
    planner.add_argument(
        "--law-card", metavar="CARD", help="the loss law: a card file or built-in name (default: the default card)"
    )
    planner.add_argument("--fit", metavar="FIT.json", help="a single law from moeplan fit --out, instead of a card")
    planner.add_argument(
        "--samples", type=argument("samples", integer=True, minimum=1), default=200,
        help="loss-law samples for intervals and p_front",
    )  # fmt: skip
    planner.add_argument(
        "--min-p-front",
        type=argument(minimum=0, maximum=1),
        default=None,
        metavar="P",
        help="keep only shapes non-dominated in at least this share of samples (0 to 1)",
    )
    planner.add_argument(
        "--max-unvalidated-share",
        type=argument(minimum=0, maximum=1),
        default=None,
        metavar="S",
        help="keep only shapes whose advantage over the best dense shape comes from unvalidated law terms "
        "in at most this share (0 to 1; each entry's evidence)",
    )
    planner.add_argument(
        "--max-extrapolation", type=argument(minimum=1), default=100.0,
        help="warn when a law term reaches this many times past its data",
    )  # fmt: skip
    planner.add_argument(
        "--trials", type=argument("trials", integer=True, minimum=1), default=500, help="Optuna trials"
    )
    planner.add_argument(
        "--objectives", default="loss,decode_ms", help="2 or 3 of loss,decode_ms,prefill_ms,active_flops"
    )
    planner.add_argument("--storage", default=None, help="Optuna storage: RDB URL or a journal file (*.log)")
    planner.add_argument("--study", default=None, help="study name (resumes it when it exists)")
    planner.add_argument("--exhaustive", action="store_true", help="enumerate the whole space (exact front)")
    planner.add_argument("--space", metavar="SPACE.toml", help="narrow or extend the search space ([space] table)")
    planner.add_argument("--measure", action="store_true", help="measure latency on this machine (cached per shape)")
    planner.add_argument("--store", default=None, help="run store caching measured shapes (with --measure)")
    planner.add_argument(
        "--train-tokens", type=argument("tokens", above=0), default=1e12,
        help="planned training tokens, in the law card's tokens",
    )  # fmt: skip
    tokens = argument("prompt_tokens", integer=True, minimum=1)
    planner.add_argument("--prompt-tokens", type=tokens, default=512, help="tokens prefilled in one pass")
    planner.add_argument(
        "--context-tokens", type=tokens, default=2048, help="tokens in the KV cache at decode (>= --prompt-tokens)"
    )
    planner.add_argument("--max-decode-ms", type=positive_float, default=None, help="bound on decode ms per token")
    planner.add_argument("--max-active-params", type=positive_float, default=None, help="bound on active parameters")
    planner.add_argument(
        "--max-weight-gb", type=argument("memory_gb", above=0), default=None,
        help="bound on weight bytes alone, in 10^9 bytes",
    )  # fmt: skip
    planner.add_argument("--seed", type=seed_int, default=0, help="sampler seed, 0 to 2^32-1")
    planner.add_argument(
        "--out", metavar="DIR", help="write the front as CSV, --arch files, HF configs and a plot (DIR is created)"
    )
    planner.add_argument("--json", action="store_true", help="print one JSON document")
    planner.set_defaults(handler=_command_plan)
