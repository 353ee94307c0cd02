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
from search.plan.samplers import DEFAULT_SAMPLER, SAMPLERS


# --- command: plan -------------------------------------------------------------------------------
def _command_plan(args: argparse.Namespace) -> None:
    from search.app.plan_faces import translated
    from search.plan.outputs import write_outputs
    from search.plan.planner import plan_result
    from search.plan.request import FieldError

    for flag, folder in (("--out", args.out), ("--report", args.report)):
        if folder:
            check_output_folder(folder, flag)  # before the search, not after it
    try:
        request = _request(args)
        result = plan_result(request)
    except FieldError as error:  # the plan layer names fields; this face spells them as flags
        raise translated(error, "cli") from None
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.out:
        for path in write_outputs(result, args.out):
            print(f"wrote {path}", file=sys.stderr)
    if args.report:
        from search.app.plan_report import write_report

        written = write_report(result, request.validated(), args.report)
        print(f"wrote {written[0]} ({len(written) - 1} files beside it)", file=sys.stderr)
    if args.json:
        print_json(result.to_dict())
        return
    from search.app.report import pareto_table, print_table

    print_table(*pareto_table(result))


def _request(args: argparse.Namespace):
    """The :class:`PlanRequest` the flags describe (units converted: GB flags to bytes)."""
    from search.plan.space import SearchSpace

    space = SearchSpace.from_toml(args.space) if args.space else SearchSpace()
    if getattr(space, "kind", "grid") == "large":
        if args.schemes is not None:
            raise UserError('--schemes: the large space (kind = "large" in --space) picks a format per part from '
                            "its bits and group_size; drop --schemes")  # fmt: skip
        return _plan_request(args, space)
    space.precision = (args.precision,)
    if args.schemes is not None:
        names = tuple(name.strip() for name in args.schemes.split(","))
        if not all(names):
            raise UserError(f"--schemes {args.schemes!r}: give comma-separated scheme names or files, none empty")
        space.schemes = names
    return _plan_request(args, space.validated())


def _plan_request(args: argparse.Namespace, space):
    """The request for ``space`` and the remaining flags."""
    from scaling.laws.card import load_card
    from scaling.laws.fit import FitResult
    from search.app.measure import measured_latency
    from search.device.profiles import get_device
    from search.plan.loss_model import FitLossModel
    from search.plan.request import PlanRequest

    if args.fit and args.law_card:
        raise UserError("give one of --fit FIT.json or --law-card CARD, not both")
    loss_model = load_card(args.law_card) if args.law_card else None
    if args.fit:
        if not os.path.isfile(args.fit):
            raise UserError(f"fit file {args.fit!r} does not exist")
        with open(args.fit) as handle:
            loss_model = FitLossModel(FitResult.from_json(handle.read()), args.fit)
    same = ("samples", "min_p_front", "max_unvalidated_share", "max_extrapolation", "trials", "train_tokens",
            "prompt_tokens", "context_tokens", "storage", "study", "seed", "exhaustive", "engine", "max_decode_ms",
            "max_active_params", "backend", "quant_method", "sampler")  # fmt: skip
    return PlanRequest(
        device=get_device(args.device),
        memory_budget_bytes=None if args.memory_gb is None else args.memory_gb * 1e9,
        objectives=tuple(o.strip() for o in args.objectives.split(",") if o.strip()),
        loss_model=loss_model,
        space=space,
        max_weight_bytes=None if args.max_weight_gb is None else args.max_weight_gb * 1e9,
        latency_oracle=measured_latency(args.store, args.runtime) if args.measure else None,
        **{name: getattr(args, name) for name in same},
    )


_tokens = argument("prompt_tokens", integer=True, minimum=1)
FLAGS: dict[str, dict] = {  # flag -> argparse options; FACES (plan_faces) names the field each one sets
    "--device": {"required": True, "help": "a device profile name (see 'moeplan devices list')"},
    "--memory-gb": {"type": argument("memory_gb", above=0), "default": None,
                    "help": "bound on peak memory, in 10^9 bytes (default: the device's usable DRAM)"},
    "--precision": {"choices": PRECISION_CHOICES, "default": "int4", "help": "weight precision"},
    "--schemes": {"metavar": "A,B,...", "default": None,
                  "help": "search these precision schemes (built-in names or TOML files) instead of --precision alone"},
    "--quant-method": {"choices": ("rtn", "gptq"), "default": "rtn", "help": "how quantised deployments are made"},
    "--backend": {"choices": ("cpu", "gpu", "npu"), "default": None,
                  "help": "the device's backend (default: recommended)"},
    "--law-card": {"metavar": "CARD", "help": "the loss law: a card file or built-in name (default: the default card)"},
    "--fit": {"metavar": "FIT.json", "help": "a single law from moeplan fit --out, instead of a card"},
    "--samples": {"type": argument("samples", integer=True, minimum=1), "default": 200,
                  "help": "loss-law samples for intervals and p_front"},
    "--min-p-front": {"type": argument(minimum=0, maximum=1), "default": None, "metavar": "P",
                      "help": "keep only shapes non-dominated in at least this share of samples (0 to 1)"},
    "--max-unvalidated-share": {
        "type": argument(minimum=0, maximum=1), "default": None, "metavar": "S",
        "help": "keep only shapes whose advantage over the best dense shape comes from unvalidated law terms "
        "in at most this share (0 to 1; each entry's evidence)"},
    "--max-extrapolation": {"type": argument(minimum=1), "default": 100.0,
                            "help": "warn when a law term reaches this many times past its data"},
    "--trials": {"type": argument("trials", integer=True, minimum=1), "default": 500,
                 "help": "Optuna trials, where Optuna runs (see --engine)"},
    "--objectives": {"default": "loss,decode_ms", "help": "2 or 3 of loss,decode_ms,prefill_ms,active_flops"},
    "--storage": {"default": None, "help": "Optuna storage: RDB URL or a journal file (*.log); runs Optuna"},
    "--study": {"default": None, "help": "study name (resumes it when it exists); runs Optuna"},
    "--exhaustive": {"action": "store_true", "help": "enumerate the whole space (exact front): --engine exhaustive"},
    "--engine": {"choices": ("auto", "exhaustive", "optuna"), "default": "auto",
                 "help": "auto: the exact front where the space can be enumerated and latency is predicted, "
                 "else Optuna; optuna: sample even an enumerable space (--trials)"},
    "--sampler": {"choices": SAMPLERS, "default": None,
                  "help": f"the Optuna sampler; naming one runs Optuna (default {DEFAULT_SAMPLER}; "
                  "tpe with --measure)"},
    "--space": {"metavar": "SPACE.toml", "help": "narrow or extend the search space ([space] table)"},
    "--measure": {"action": "store_true", "help": "measure latency on this machine (cached per shape)"},
    "--store": {"default": None, "help": "run store caching measured shapes (with --measure)"},
    "--runtime": {"choices": ("torch", "llamacpp"), "default": "torch",
                  "help": "with --measure: torch or llama.cpp (q4_0)"},
    "--train-tokens": {"type": argument("tokens", above=0), "default": 1e12,
                       "help": "planned training tokens, in the law card's tokens"},
    "--prompt-tokens": {"type": _tokens, "default": 512, "help": "tokens prefilled in one pass"},
    "--context-tokens": {"type": _tokens, "default": 2048,
                         "help": "tokens in the KV cache at decode (>= --prompt-tokens)"},
    "--max-decode-ms": {"type": positive_float, "default": None, "help": "bound on decode ms per token"},
    "--max-active-params": {"type": positive_float, "default": None, "help": "bound on active parameters"},
    "--max-weight-gb": {"type": argument("memory_gb", above=0), "default": None,
                        "help": "bound on weight bytes alone, in 10^9 bytes"},
    "--seed": {"type": seed_int, "default": 0, "help": "sampler seed, 0 to 2^32-1"},
    "--out": {"metavar": "DIR",
              "help": "write the front as CSV, --arch files, HF configs and a plot (DIR is created)"},
    "--report": {"metavar": "DIR",
                 "help": "write report.md (recommendation, front, the winner's story, plots) in DIR"},
    "--json": {"action": "store_true", "help": "print one JSON document"},
}  # fmt: skip


def register(commands: argparse._SubParsersAction) -> None:
    planner = commands.add_parser(
        "plan",
        help="Pareto-optimal shapes for a device memory budget",
        description="Search the space for the shapes on the Pareto front of the objectives, within the budget.",
    )
    for flag, options in FLAGS.items():
        planner.add_argument(flag, **options)
    planner.set_defaults(handler=_command_plan)
