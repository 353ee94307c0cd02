"""``moeplan plan --report DIR``: the plan as a report a planner reads top down.

``report.md`` beside its plots: the recommended shape for the budget and why, what the shape
codes mean, the robust front (numbered as in ``pareto.png``), the winner's loss term by term and
its latency per cost term and memory by part (``winner.png``), the MobileMoE stand-ins scored at
the same deployment, and the law card's fit (``fit.png``: each term with its 90% band and its
data range). The front's CSV, ``--arch`` files and HF configs come from :func:`write_outputs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.app.report import budget_text, human_bytes, human_count, hypervolume_text
from search.app.story import Deployment, shape_story

if TYPE_CHECKING:
    from search.plan.result import PlanResult

ROBUST = 0.5  # the recommendation is among shapes non-dominated in at least half the samples
CODES = (
    "Shape names: `dense-L24-d1536-r2.75` is a dense model of 24 layers of width 1536 whose MLP is 2.75 times "
    "as wide as the model (`r`, d_ff / d_model). `moe-L24-d1536-E8-k2-G4+s-r2.0`: `E8` is the expansion E "
    "(experts at granularity 1), `k2` the top-k at granularity 1, `G4` the granularity G (each expert split in G "
    "narrower ones: E·G = 32 routed experts, k·G = 8 chosen per token, each d_ff / G wide), `+s` one shared "
    "expert every token uses."
)


def _interval(values: list[float] | None, spec: str = ".3f") -> str:
    if not values:
        return "no interval (uncalibrated prior)"
    return f"{values[0]:{spec}} to {values[1]:{spec}}"  # "to": a dash between signed numbers misreads


def recommend(result: PlanResult) -> tuple[int, str]:
    """The index of the recommended entry and why: the lowest median loss among the robust shapes."""
    entries = result.pareto
    floor = max(result.min_p_front or 0.0, ROBUST)
    robust = [i for i, e in enumerate(entries) if e.get("p_front", 1.0) >= floor] or list(range(len(entries)))
    best = min(robust, key=lambda i: (entries[i]["predicted_loss"], -entries[i]["decode_tokens_per_s"]))
    winner = entries[best]
    low = winner["predicted_loss_ci90"][0] if "predicted_loss_ci90" in winner else winner["predicted_loss"]
    rivals = []
    if "predicted_loss_ci90" in winner:  # shapes whose interval reaches below the winner's upper end
        high = winner["predicted_loss_ci90"][1]
        rivals = [i for i in robust if i != best and entries[i]["predicted_loss_ci90"][0] <= high]
    why = (
        f"The lowest median predicted loss among the {len(robust)} shapes on the front in at least "
        f"{floor:.0%} of the law's {result.loss_samples} samples (p_front >= {floor:g}), within "
        f"{budget_text(result)}."
    )
    if rivals:
        fastest = max(rivals, key=lambda i: entries[i]["decode_tokens_per_s"])
        other = entries[fastest]
        speed = other["decode_tokens_per_s"] / winner["decode_tokens_per_s"]
        why += (
            f" Its 90% loss interval (lower end {low:.3f}) overlaps those of {len(rivals)} other robust shapes: the "
            f"law cannot tell them apart. The fastest of those, #{fastest + 1} {other.name}, decodes "
            f"{speed:.2f}x as fast at a median loss {other['predicted_loss'] - winner['predicted_loss']:+.3f} higher; "
            "pick it where speed matters more than the median."
        )
    return best, why


def deployment_for(request, entry: dict[str, Any]) -> Deployment:
    """The story's deployment of one entry of the plan made from ``request``."""
    menu = request.space.scheme_menu
    return Deployment(
        device=request.device.for_backend(request.backend),
        precision=entry["precision"],
        scheme=menu.get(entry.get("scheme")) if menu else None,
        loss_model=request.loss_model,
        train_tokens=request.train_tokens,
        samples=request.samples,
        seed=request.seed,
        quant_method=request.quant_method,
        prompt_tokens=request.prompt_tokens,
        context_tokens=request.context_tokens,
    )


def write_report(result: PlanResult, request, folder: str | Path, mobilemoe: bool = True) -> list[Path]:
    """Write ``report.md``, ``pareto.png``, ``winner.png`` and ``fit.png`` (and the front's files)."""
    from scaling.shape.arch import ArchSpec
    from search.plan.outputs import write_outputs

    folder = Path(folder)
    best, why = recommend(result)
    written = write_outputs(result, folder, highlight=best + 1)
    winner = result.pareto[best]
    story = shape_story(ArchSpec.from_dict(winner["arch"]), deployment_for(request, winner))
    from search.app.report_plots import draw_card_fit, draw_winner

    written.append(draw_winner(story, folder / "winner.png"))
    fit = draw_card_fit(request.loss_model, folder / "fit.png")
    if fit is not None:
        written.append(fit)
    comparison = mobilemoe_lines(request, winner) if mobilemoe else []
    lines = report_lines(result, best, why, story, has_fit=fit is not None, comparison=comparison)
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return [folder / "report.md", *written]


def report_lines(
    result: PlanResult, best: int, why: str, story: dict[str, Any], has_fit: bool, comparison: list[str] = ()
) -> list[str]:
    """The report's text, top down."""
    from search.app.report import pareto_table

    winner = result.pareto[best]
    card = Path(str(result.law_card)).stem or "the given fit"
    unit = result.loss_unit
    lines = [
        f"# Plan: {result.device} ({result.backend}), {budget_text(result)}",
        "",
        f"Precision {'/'.join(result.schemes or [winner['precision']])}; trained on "
        f"{result.train_tokens:.2g} {result.tokens_unit}; loss in {unit} from the law card "
        f"`{card}`; prompt {result.prompt_tokens} and context {result.context_tokens} tokens. "
        f"{result.feasible_shapes:,} of {result.space_size:,} shapes fit.",
        "",
        f"## Recommended: #{best + 1} {winner.name}",
        "",
        why,
        "",
        f"- predicted loss {winner['predicted_loss']:.3f} {unit} (90% {_interval(winner.get('predicted_loss_ci90'))}),"
        f" p_front {winner.get('p_front', 1.0):.2f}",
        f"- decode {winner['decode_tokens_per_s']:.1f} tokens/s "
        f"({_interval(winner.get('decode_tokens_per_s_ci90'), '.1f')}), prefill {winner['prefill_ms']:.0f} ms "
        f"({_interval(winner.get('prefill_ms_ci90'), '.0f')})",
        f"- {human_count(winner['active_params'])} active of {human_count(winner['total_params'])} parameters; "
        f"weights {human_bytes(winner['weight_bytes'])}, peak memory {human_bytes(winner['peak_memory_bytes'])}",
        "",
        CODES,
        "",
        *_loss_lines(story),
        *_latency_lines(story),
        *_memory_lines(story),
        "![the winner's memory and latency](winner.png)",
        "",
        f"## The robust front ({len(result.pareto)} shapes)",
        "",
        f"Numbered as in the plot; {hypervolume_text(result)}.",
        "",
    ]
    _title, columns, rows = pareto_table(result)
    lines += ["| # | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {i + 1} | " + " | ".join(row) + " |" for i, row in enumerate(rows)]
    lines += ["", "![the front](pareto.png)", ""]
    if result.warnings:
        lines += ["## Extrapolation", "", *[f"- {w}" for w in result.warnings], ""]
    lines += comparison
    if has_fit:
        lines += [
            "## The law card's fit",
            "",
            f"Each term of `{card}` as a curve with its 90% band (the spread of its bootstrap replicates), the green "
            "span where it was fitted; `moeplan laws show` lists its sources, parameters and backtests.",
            "",
            "![the law card](fit.png)",
            "",
        ]
    return lines


def _loss_lines(story: dict[str, Any]) -> list[str]:
    loss = story["loss"]
    lines = [
        f"### Its loss, term by term ({loss['unit']})",
        "",
        "Each step: the loss with the card's terms up to it less the loss without it, on paired samples.",
        "",
        "| term | step | 90% interval | extrapolation (x past its data) | source |",
        "|---|---|---|---|---|",
    ]
    for term in loss["terms"]:
        ratios = ", ".join(f"{k} {v:.3g}x" for k, v in (term.get("extrapolation") or {}).items()) or "-"
        lines.append(f"| {term['term']} | {term['step']:+.4f} | {_interval(term.get('ci90'), '+.4f')} | {ratios} | "
                     f"{str(term.get('source', '')).replace('|', '/')} |")  # fmt: skip
    return [*lines, ""]


def _latency_lines(story: dict[str, Any]) -> list[str]:
    latency = story["latency"]
    lines = [
        f"### Its latency per cost term ({latency['device']}, {latency['backend']}: {latency['runtime']})",
        "",
        f"Intervals: {latency['interval']}. A term rests on `prior` numbers when any number it reads is a prior.",
        "",
        "| cost term | prefill ms | decode ms | rests on |",
        "|---|---|---|---|",
    ]
    decode = {t["term"]: t for t in latency["decode"]["terms"]}
    for term in latency["prefill"]["terms"]:
        other = decode.get(term["term"], {"ms": 0.0})
        lines.append(f"| {term['label']} | {term['ms']:.3g} | {other['ms']:.3g} | {term['state']} |")
    total = latency["prefill"]["total_ms"], latency["decode"]["total_ms"]
    return [*lines, f"| total | {total[0]:.4g} | {total[1]:.4g} | |", ""]


def _memory_lines(story: dict[str, Any]) -> list[str]:
    memory = story["memory"]
    lines = ["### Its peak memory", "", "| part | bytes |", "|---|---|"]
    for part, value in memory["weights_by_part_bytes"].items():
        lines.append(f"| weights: {part} | {human_bytes(value)} |")
    lines += [
        f"| KV cache ({memory['context_tokens']} tokens, fp16) | {human_bytes(memory['kv_cache_bytes'])} |",
        f"| activations ({memory['prompt_tokens']}-token prefill) | {human_bytes(memory['activation_bytes'])} |",
        f"| runtime (the device profile's) | {human_bytes(memory['runtime_bytes'])} |",
        f"| **peak** | **{human_bytes(memory['peak_memory_bytes'])}** of {human_bytes(memory['usable_memory_bytes'])} "
        "usable |",
        "",
    ]
    return lines


def mobilemoe_lines(request, winner: dict[str, Any]) -> list[str]:
    """The MobileMoE S/M/L stand-ins (the nearest shapes with a shared expert and G > 1) at this plan."""
    from search.app.mobilemoe import PAPER, _stand_in
    from search.plan.planner import evaluate_space

    evaluated = evaluate_space(request)
    if not ((evaluated.frame["E"] > 1) & (evaluated.frame["G"] > 1) & (evaluated.frame["S"] > 0)).any():
        return []
    lines = [
        "## Against MobileMoE",
        "",
        "MobileMoE (arXiv 2605.27358) reports S/M/L models of 272M/528M/922M active parameters at about "
        "0.68/1.48/2.75 GB of INT4 weights; each is stood in for by the nearest shape of this space with a shared "
        "expert and fine-grained experts, scored at this plan's deployment.",
        "",
        "| size | stand-in | fits this budget | loss (90%) | p_front | decode tok/s | vs the recommended |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, (active, total, _) in PAPER.items():
        index = _stand_in(evaluated, active, total)
        row = evaluated.frame.loc[[index]]
        entry = evaluated.entries(row)[0]
        fits = "yes" if bool(row["feasible"].iloc[0]) else "no"
        delta = entry["predicted_loss"] - winner["predicted_loss"]
        speed = entry["decode_tokens_per_s"] / winner["decode_tokens_per_s"]
        lines.append(
            f"| {size} | {entry['arch']['name']} ({human_count(entry['active_params'])} of "
            f"{human_count(entry['total_params'])}) | {fits} | {entry['predicted_loss']:.3f} "
            f"({_interval(entry['predicted_loss_ci90'])}) | {entry['p_front']:.2f} | "
            f"{entry['decode_tokens_per_s']:.1f} | loss {delta:+.3f}, {speed:.2f}x the speed |"
        )
    return [*lines, ""]
