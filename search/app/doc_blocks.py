"""Generated blocks for docs/ and README read from benchmarks' committed JSON outputs.

Each producer formats one table or sentence from a file in ``docs/`` that a benchmark wrote
(rerunning the benchmark takes minutes to hours, so its output is committed and the text is
generated from it). ``search.app.readme_blocks`` lists them in its ``BLOCKS``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[2] / "docs"
DEVICE_LOOP = DOCS / "device_loop_results.json"  # benchmarks/llamacpp_cost_model.py --out
LOFO = DOCS / "device_loop_lofo.json"  # benchmarks/llamacpp_published_lofo.py on this tree
LOFO_BEFORE = DOCS / "device_loop_lofo_main.json"  # the same script on main before the cache term
SAMPLERS = DOCS / "sampler_hypervolume.json"  # benchmarks/sampler_hypervolume.py

STRUCTURES = {"main": "main (before)", "cache": "cache + per-token", "cache-only": "cache only"}
SAMPLER_LABELS = {
    "nsga2": "nsga2 (defaults)",
    "nsga2-tuned": "nsga2-tuned (pop 16, mutation 0.25)",
    "nsga3": "nsga3",
    "tpe": "tpe (multivariate)",
    "random": "random",
    "qmc": "qmc (Sobol)",
}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _pct(value: float | None, digits: int = 1) -> str:
    return "none" if value is None else f"{value:.{digits}%}"


def _signed_percents(errors: list[float]) -> str:
    return " ".join(f"{round(100 * error):+d}".replace("-", "−") for error in errors)


def device_loop_fits() -> str:
    """Held-out and training leave-one-model-out error of each fitted cost-model structure."""
    results = _load(DEVICE_LOOP)
    rows = [
        "| structure | held-out prefill MAPE | held-out decode MAPE | train LOO prefill / decode "
        "| prefill errors (%) | decode errors (%) |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in STRUCTURES.items():
        fit, held_out = results[key]["fit"], results[key]["held_out"]
        chosen = key == results["chosen"]
        mark = "**" if chosen else ""
        rows.append(
            f"| {label}{' (chosen)' if chosen else ''} | {mark}{_pct(held_out['prefill_mape'])}{mark} "
            f"| {mark}{_pct(held_out['decode_mape'])}{mark} "
            f"| {_pct(fit['loo_prefill_mape'])} / {_pct(fit['loo_decode_mape'])} "
            f"| {_signed_percents(held_out['errors']['prefill'])} | {_signed_percents(held_out['errors']['decode'])} |"
        )
    return "\n".join(rows)


def device_loop_pair() -> str:
    """The MobileMoE pair's measured llama.cpp timings and speed-ups against the chosen fit's."""
    results = _load(DEVICE_LOOP)
    dense, moe = results["mobilemoe_pair"]["timings"].values()
    predicted = results[results["chosen"]]["speedups"]
    measured = results["mobilemoe_pair"]["speedups"]
    rows = ["| | dense | MoE | measured speed-up | cost model (chosen fit) |", "|---|---|---|---|---|"]
    for tokens in dense["prefill_ms"]:
        rows.append(
            f"| prefill {tokens} | {dense['prefill_ms'][tokens]:.0f} ms | {moe['prefill_ms'][tokens]:.0f} ms "
            f"| **{measured[tokens]['measured_prefill']:.2f}×** | {predicted[tokens]['predicted_prefill']:.2f}× |"
        )
    rows.append(
        f"| decode | {dense['decode_tokens_per_s']:.1f} tok/s | {moe['decode_tokens_per_s']:.1f} tok/s "
        f"| **{measured['decode']['measured']:.2f}×** | {predicted['decode']['predicted']:.2f}× |"
    )
    return "\n".join(rows)


def device_loop_summary() -> str:
    """README's one sentence on the llama.cpp loop: the pair's speed-ups and the held-out error."""
    results = _load(DEVICE_LOOP)
    measured = results["mobilemoe_pair"]["speedups"]
    chosen = results[results["chosen"]]
    held_out = chosen["held_out"]
    prefill = "/".join(f"{measured[tokens]['measured_prefill']:.2f}×" for tokens in ("64", "256", "1024"))
    n_train = len(results["timings"]) - len(held_out["shapes"])
    return (
        f"Measured here ({results['threads']} thread, load {results['load_before'].split()[0]} → "
        f"{results['load_after'].split()[0]}): the demo's dense and MoE pair of equal INT4 memory runs "
        f"{prefill} faster in prefill at 64/256/1024 tokens and {measured['decode']['measured']:.2f}× in "
        f"decode in llama.cpp q4_0; the cost model fitted on {n_train} llama.cpp shapes predicts "
        f"{len(held_out['shapes'])} unseen ones within {_pct(held_out['prefill_mape'])} (prefill) and "
        f"{_pct(held_out['decode_mape'])} (decode) MAPE."
    )


def _lofo_cell(group: dict[str, Any], target: str) -> str:
    if len(group["models"]) < 2:
        return "one model"
    return _pct(group["loo_mape"][target], 2 if target == "prefill" else 1)


def _rows_label(rows: list[int]) -> str:
    return ", ".join(str(row) for row in rows)


def published_lofo() -> str:
    """Leave-one-model-out error on the published rows per backend and SoC, now and before."""
    now, before = _load(LOFO)["lofo"], _load(LOFO_BEFORE)["lofo"]
    lines = [
        "| backend | SoC | rows | models | LOO prefill | LOO decode | before: LOO prefill | before: LOO decode |",
        "|---|---|---|---|---|---|---|---|",
    ]
    refused = []
    for group, earlier in zip(now, before, strict=True):
        if "refused" in group:
            refused.append(f"- {group['backend']}, {group['soc']}: {group['refused']}")
            continue
        lines.append(
            f"| {group['backend']} | {group['soc']} | {_rows_label(group['rows'])} | {', '.join(group['models'])} "
            f"| {_lofo_cell(group, 'prefill')} | {_lofo_cell(group, 'decode')} "
            f"| {_lofo_cell(earlier, 'prefill')} | {_lofo_cell(earlier, 'decode')} |"
        )
    return "\n".join(
        [*lines, "", "Refused groups (the parser or the roofline check refuses their rows):", "", *refused]
    )


def sampler_hypervolume() -> str:
    """Median share of the reference hypervolume [min, max] over seeds, per sampler and trial count."""
    result = _load(SAMPLERS)
    shares = result["hypervolume_share"]
    trials = [key for key in next(iter(shares.values())) if key != "seconds_per_run"]
    lines = [f"| sampler | {' | '.join(trials)} | s/run |", "|---" * (len(trials) + 2) + "|"]
    for sampler, by_trials in shares.items():
        cells = [f"{by_trials[n]['median']:.3f} [{by_trials[n]['min']:.3f}, {by_trials[n]['max']:.3f}]" for n in trials]
        label = SAMPLER_LABELS.get(sampler, sampler)
        lines.append(f"| {label} | {' | '.join(cells)} | {by_trials['seconds_per_run']:.1f} |")
    return "\n".join(lines)


def _out_of_sample(backtest: dict[str, Any] | None) -> str:
    if not backtest:
        return "unvalidated"
    if "origins" in backtest:
        errors = ", ".join(
            f"{origin['mean_abs_rel_error']:.1%} (x{origin['ratio']:.1f})" for origin in backtest["origins"]
        )
        return f"rolling origin over {backtest['column']}, mean error (extrapolation ratio): {errors}"
    if "checks" in backtest:
        return "; ".join(
            f"{check['what']}: predicted {check['predicted']:+.3f}, observed {check['observed']:+.3f}"
            for check in backtest["checks"]
        )
    if "families_pooled" in backtest:
        return f"leave-one-family-out, {backtest['metric']}: {backtest['families_pooled']:.2f} pooled"
    return "see `moeplan laws show`"


def law_card_parameters() -> str:
    """Each term of the default card: its parameters (point, 90% interval) and out-of-sample check."""
    import subprocess
    import sys

    program = "from search.app.cli import main; raise SystemExit(main())"
    args = [sys.executable, "-c", program, "laws", "show", "--json"]
    card = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
    unit = card["loss_unit"]
    unit_text = f"{unit['per']} ({unit['tokenizer']})" if isinstance(unit, dict) else str(unit)
    lines = [
        f"Card `{card['name']}` (`moeplan laws show --json`), loss in {unit_text}, intervals at "
        f"{card['interval_level']:.0%}:",
        "",
        "| term | form | parameters: point [90% interval] | out of sample |",
        "|---|---|---|---|",
    ]
    for name, term in card["terms"].items():
        form, fitted = next(iter(term["forms"].items()))
        params = ", ".join(
            f"{key} {value:.3g}" + (" [{:.3g}, {:.3g}]".format(*fitted["ci90"][key]) if key in fitted["ci90"] else "")
            for key, value in fitted["params"].items()
        )
        lines.append(f"| `{name}` | {form} | {params} | {_out_of_sample(term['backtest'])} |")
    return "\n".join(lines)
