"""``moeplan demo``: the main job on the embedded defaults, end to end in a few minutes.

1. The architecture table of the built-in shapes (exact parameters, FLOPs and INT4 bytes).
2. A real sweep: the smoke spec, trained on Shakespeare into ``runs/demo/demo.sqlite``.
3. The planner's law card: each term with its source, range, intervals and backtests.
4. A plan: the robust Pareto front (p_front >= 0.5) of loss against decode latency on the
   iPhone 16 Pro profile within a 2 GB memory budget, losses with their 90% intervals, a plot
   and one --arch file per proposed shape.
5. The MobileMoE question: the planner at the paper's three INT4 budgets, and how the paper's
   shapes score there.
6. Dense against MoE at equal INT4 memory, per calibrated phone backend, with intervals.

Everything lands in ``runs/demo/`` (under the working folder): ``summary.md`` and the plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from scaling.shape.presets import get_preset, preset_names
from search.app.report import print_arch_table, print_table

REPORT = Path("runs") / "demo"  # under the working folder, created when missing
PLAN_MEMORY_GB = 2.0  # a phone app's share of DRAM for the model: weights, KV cache, activations
MIN_P_FRONT = 0.5  # the robust front: shapes non-dominated in at least half of the law's samples


def _step(message: str) -> None:
    print(f"\n== {message}", file=sys.stderr)


def run_demo(args: argparse.Namespace) -> None:
    REPORT.mkdir(parents=True, exist_ok=True)
    lines = ["# moeplan demo report", ""]

    _step("1/6 architecture accounting (INT4 weights, fp16 group scales)")
    print_arch_table([get_preset(name) for name in preset_names()], "int4")

    _step("2/6 a real sweep: the built-in smoke spec (runs/sweeps/smoke.toml) on Shakespeare")
    from scaling.runs.spec import load_sweep
    from scaling.runs.store import RunStore
    from scaling.runs.sweep import prune_sweep, run_sweep

    store_url = f"sqlite:///{REPORT / 'demo.sqlite'}"
    spec = load_sweep("smoke")
    if (REPORT / "demo.sqlite").exists():  # the demo's own scratch store: drop runs of older specs
        prune_sweep(spec, store_url)
    summary = run_sweep(spec, store_url, quiet=not sys.stderr.isatty())
    current = spec.run_ids
    runs = [run for run in RunStore(store_url).runs("smoke") if run["id"] in current]
    lines += [
        "## Smoke sweep",
        "",
        f"{summary['finished']} runs finished in {summary['wall_s']:.0f} s.",
        "",
        "| run | total params | active params | tokens | final val loss (nats/byte) |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['arch_name']} | {run['total_params']:,} | {run['active_params']:,} | "
            f"{run['tokens']:,} | {run['final_val_loss']:.4f} |"
        )

    _step("3/6 the planner's law card")
    from scaling.laws.card import load_card

    card = load_card()
    print(card.summary(), file=sys.stderr)
    lines += ["", f"## The planner's law card (`{card.name}`, loss in {card.unit})", "", "```", card.summary(), "```"]

    _step(f"4/6 plan: the robust Pareto front on iphone-16-pro within {PLAN_MEMORY_GB:g} GB (INT4)")
    lines += _plan_section()

    _step("5/6 the MobileMoE question: the planner at the paper's three INT4 budgets")
    lines += _mobilemoe_section()

    _step("6/6 dense against MoE at equal INT4 memory, per calibrated backend, with intervals")
    lines += _speedup_section()
    (REPORT / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"\nreport: {REPORT / 'summary.md'} (plots beside it)", file=sys.stderr)


def _plan_section() -> list[str]:
    """The robust front on the phone at the demo's budget (every shape of the default space)."""
    from search.app.plan_report import CODES, recommend, write_report
    from search.app.report import pareto_table
    from search.device.profiles import get_device
    from search.plan.planner import plan_result
    from search.plan.request import PlanRequest

    request = PlanRequest(
        device=get_device("iphone-16-pro"),
        memory_budget_bytes=PLAN_MEMORY_GB * 1e9,
        exhaustive=True,
        min_p_front=MIN_P_FRONT,
    ).validated()
    result = plan_result(request)
    write_report(result, request, REPORT / "plan", mobilemoe=False)  # section 5 asks the MobileMoE question
    best, why = recommend(result)
    winner = result.pareto[best]
    title, columns, rows = pareto_table(result)
    print_table(title, columns, rows)
    return [
        "",
        f"## Plan: {title}",
        "",
        f"**Recommended: #{best + 1} {winner.name}**, predicted loss {winner['predicted_loss']:.3f} "
        f"{result.loss_unit} (90% {winner['predicted_loss_ci90'][0]:.3f}-{winner['predicted_loss_ci90'][1]:.3f}), "
        f"decode {winner['decode_tokens_per_s']:.1f} tokens/s (uncalibrated prior: no interval). {why}",
        "",
        f"The whole story, top down (the winner's loss per card term, latency per cost term, memory by part, the "
        f"numbered front, the law card's fit): [plan/report.md](plan/report.md). {result.feasible_shapes:,} "
        f"of {result.space_size:,} shapes fit on the {result.backend} backend; `p_front` is the share of "
        f"the law's {result.loss_samples} samples in which a shape is non-dominated (listed: p_front >= "
        f"{MIN_P_FRONT}). {CODES}",
        "",
        "| # | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        *[f"| {i + 1} | " + " | ".join(row) + " |" for i, row in enumerate(rows)],
        "",
        "![Pareto front](plan/pareto.png)",
        "",
        "## The law card's fit",
        "",
        "Each term with its 90% band, shaded where it was fitted:",
        "",
        "![law card fit](plan/fit.png)",
    ]


def _mobilemoe_section() -> list[str]:
    """The paper's S/M/L budgets: the robust front, stand-ins that fit each budget, the planner's
    shape at their speed, the paired difference, and which terms carry each advantage."""
    from search.app.mobilemoe import PAPER, answer

    header = [
        "size", "budget", "robust shapes (MoE)", "paper stand-in", "its loss (90%)", "p_front", "decode tok/s",
        "planner at that speed", "its loss (90%)", "stand-in - planner (90%)", "best dense, loss",
    ]  # fmt: skip
    rows, terms = [], []
    for item in answer(min_p_front=MIN_P_FRONT):
        paper, best, dense = item.paper_shape, item.best, item.dense
        moe = sum(e["n_routed_experts"] > 1 for e in item.front)
        diff = item.difference
        same = paper["arch"]["name"] == best["arch"]["name"]
        verdict = ": the same shape" if same else ("" if item.tell_apart else ": cannot tell apart")
        rows.append(
            [
                item.size, f"{item.budget_gb} GB", f"{len(item.front)} ({moe})", _named(paper), _with_interval(paper),
                f"{paper['p_front']:.2f}", f"{paper['decode_tokens_per_s']:.1f}", _named(best), _with_interval(best),
                f"{diff['median']:+.3f} ({diff['lower']:+.3f}, {diff['upper']:+.3f}){verdict}",
                f"{dense['arch']['name']} {dense['predicted_loss']:.3f}" if dense else "none fits",
            ]
        )  # fmt: skip
        for label, entry in (("stand-in", paper), ("planner", best)):
            parts = ", ".join(f"{kind} {value:+.2f}" for kind, value in entry["log_m_terms"].items())
            advantage = entry["advantage_over_best_dense"]
            share = (
                "" if advantage is None or advantage <= 0 else f", {entry['evidence']:.0%} of it from unvalidated terms"
            )
            terms.append(
                f"- {item.size} {label} {entry['arch']['name']}: ln M {parts}; loss vs best dense "
                f"{-advantage:+.3f}{share}"
                if advantage is not None
                else f"- {item.size} {label}: ln M {parts}"
            )
    print_table("MobileMoE budgets on iphone-16-pro (INT4 weights)", header, rows)
    actives = ", ".join(f"{k} {v[0] / 1e6:.0f}M of {v[1] / 1e9:.1f}B at {v[2]} GB" for k, v in PAPER.items())
    unvalidated = ", ".join(f"{k} ({why})" for k, why in item.unvalidated.items()) or "none"
    return [
        "",
        "## The MobileMoE question (iphone-16-pro, INT4 weight budgets)",
        "",
        f"The paper's models ({actives}) are stood in for by the shapes of the planner's space with a shared "
        "expert and fine-grained experts that fit each budget, nearest in active and total parameters. The "
        "planner's answer is its robust shape of lowest loss that decodes at least as fast. Differences are "
        "paired (the same parameter draws); where their 90% interval holds zero the evidence cannot tell the two "
        f"apart. Unvalidated terms: {unvalidated}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        "What carries each shape (ln M = ln(N_eq / N_active) per term, medians; N_eq <= N_total):",
        "",
        *terms,
    ]


def _named(entry: dict) -> str:
    return f"{entry['arch']['name']} ({entry['active_params'] / 1e6:.0f}M of {entry['total_params'] / 1e9:.2f}B)"


def _with_interval(entry: dict) -> str:
    low, high = entry["predicted_loss_ci90"]
    return f"{entry['predicted_loss']:.3f} ({low:.3f}-{high:.3f})"


def _speedup_section() -> list[str]:
    """The MoE preset against the dense preset of equal INT4 memory, per calibrated backend."""
    from search.device.moe_check import moe_speedups
    from search.device.profiles import get_device

    tables = []
    for device in ("galaxy-s25", "iphone-16-pro"):
        tables.append(moe_speedups(get_device(device), prompts=(64, 512, 2048), n_samples=1000))
    frame = pd.concat(tables)
    header = ["device", "backend", "calibrated", "prompt", "prefill x (90%)", "decode x (90%)"]
    rows = [
        [
            row.device,
            row.backend,
            "yes" if row.calibrated else "no (priors)",
            str(row.prompt_tokens),
            _speedup(row.prefill_speedup, row.prefill_lo, row.prefill_hi, row.calibrated),
            _speedup(row.decode_speedup, row.decode_lo, row.decode_hi, row.calibrated),
        ]
        for row in frame.itertuples()
    ]
    print_table("MoE (phone-moe-a0.3b) over dense (phone-dense-1.5b), equal INT4 memory", header, rows)
    figure = _draw_speedups(frame, REPORT / "dense_vs_moe.png")
    return [
        "",
        "## Dense against MoE at equal INT4 memory",
        "",
        "phone-moe-a0.3b against phone-dense-1.5b; speed-up = dense time / MoE time, decode right after the "
        "prompt. MobileMoE measured 2.2-3.4x decode and 1.8-3.8x prefill on phones.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        f"![dense vs MoE]({figure.name})",
    ]


def _speedup(value: float, low: float, high: float, calibrated: bool) -> str:
    """A speed-up with its 90% interval; on an uncalibrated backend, no zero-width interval."""
    if not calibrated or high - low <= 1e-9 * abs(value):
        return f"{value:.2f} (no interval: uncalibrated prior)"
    return f"{value:.2f} ({low:.2f}-{high:.2f})"


LINE_COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:red", "tab:brown", "tab:pink")  # none like the band


def _draw_speedups(frame: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.8), dpi=120, sharey=True)
    for axis, quantity, band in ((axes[0], "prefill", (1.8, 3.8)), (axes[1], "decode", (2.2, 3.4))):
        axis.axhspan(*band, color="tab:green", alpha=0.15, label="MobileMoE, measured on phones")
        for index, ((device, backend), rows) in enumerate(frame.groupby(["device", "backend"])):
            value = rows[f"{quantity}_speedup"]
            calibrated = bool(rows["calibrated"].iloc[0])
            # the point prediction can sit just outside the sampled interval: no negative bar
            errors = [(value - rows[f"{quantity}_lo"]).clip(lower=0), (rows[f"{quantity}_hi"] - value).clip(lower=0)]
            label = f"{device} {backend}" + ("" if calibrated else " (priors only, no interval)")
            axis.errorbar(rows["prompt_tokens"], value, yerr=errors if calibrated else None, marker="o", capsize=2,
                          color=LINE_COLOURS[index % len(LINE_COLOURS)], linestyle="-" if calibrated else "--",
                          label=label)  # fmt: skip
        axis.set(xscale="log", xlabel="prompt tokens", title=f"{quantity}: MoE speed-up over dense (x)")
    axes[0].set_ylabel("dense time / MoE time (bars: 90%)")
    axes[1].legend(fontsize=7)
    figure.suptitle(
        "phone-moe-a0.3b vs phone-dense-1.5b, equal INT4 memory; dashed lines rest on uncalibrated priors", fontsize=9
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
