"""``moeplan laws show``: a law card as text, with one interval level (90%) throughout.

Per term: its source and range, each parameter's point value beside the median and 90% interval
of its replicates, parameters that are fixed (not estimated), replicates at an optimiser's bound,
the fit's convergence, and its out-of-sample check — or ``unvalidated`` and why.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scaling.laws.card_levels import LEVEL, PENALTY_SHOWN, QUANT_TERM

AT_BOUND_SHARE = 0.05  # a parameter with more of its replicates at a bound than this is unidentified


def summary(card) -> str:
    lines = [
        f"Law card {card.name!r}   loss unit: {card.unit}   tokens: {card.unit.token_name}",
        f"intervals: {LEVEL:.0%} (replicate percentiles) everywhere",
        "bound: N_eq <= N_total (no MoE is worth more than the dense model of its total size)",
    ]
    for kind, term in card.terms.items():
        lines.append(f"\n[{kind}] {term.source}")
        if term.data_range:
            spans = ", ".join(f"{k} {_span(v)}" for k, v in term.data_range.items())
            lines.append(f"  data: {spans}")
        lines += _parameter_lines(term)
        lines += _evidence_lines(term)
        why = term.validation()
        lines.append(f"  unvalidated: {why}" if why else f"  out of sample: {_backtest_line(term.backtest)}")
        if term.notes:
            lines.append(f"  note: {term.notes}")
    return "\n".join(lines)


def _parameter_lines(term) -> list[str]:
    lines = []
    bounds = term.evidence.get("bounds", {})
    for row in term.conf_int().itertuples():
        form = term.forms[row.form]
        label = f"{row.form} (weight {form.weight:.2f})" if len(term.forms) > 1 else row.form
        values = np.asarray(form.replicates.get(row.param, []), dtype=float)
        if not len(values) or np.ptp(values) == 0:
            lines.append(f"  {label:>24} {row.param:>11} = {row.value:<10.5g} fixed (not estimated)")
            continue
        median = float(np.median(values))
        text = f"  {label:>24} {row.param:>11} = {row.value:<10.5g} median {median:<10.5g} "
        text += f"90% [{row.lower:.5g}, {row.upper:.5g}]"
        if not row.lower <= row.value <= row.upper:
            text += "  point outside its replicates' interval"
        if row.param in bounds:
            low, high = bounds[row.param]
            hit = float(np.mean((values <= low * (1 + 1e-6)) | (values >= high * (1 - 1e-6))))
            if hit > AT_BOUND_SHARE:
                text += f"  {hit:.0%} of replicates at a bound [{low:.3g}, {high:.3g}]: unidentified"
        lines.append(text)
    return lines


def _evidence_lines(term) -> list[str]:
    evidence: dict[str, Any] = term.evidence
    lines = []
    if "converged" in evidence:
        lines.append(f"  converged: {evidence['converged']}; at bounds: {evidence.get('at_bounds') or 'none'}")
    if evidence.get("point_vs_median"):
        lines.append(f"  point vs median: {evidence['point_vs_median']}")
    if term.kind == QUANT_TERM and evidence.get("params"):
        shown = [
            f"{name} {value:.3g}"
            for name, value in evidence["params"].items()
            if name in evidence.get("shown", PENALTY_SHOWN)
        ]
        if shown:
            lines.append(f"  as factors (points): {'; '.join(shown)}")
    for line in evidence.get("checks_text", []):
        lines.append(f"  check: {line}")
    return lines


def _span(values: list[float]) -> str:
    low, high = values
    return f"{low:.3g}-{high:.3g}"


def _backtest_line(backtest: dict[str, Any]) -> str:
    if backtest.get("kind") == "external":
        parts = [
            f"{c['what']}: predicted {c['predicted']:+.3f}, observed {c['observed']:+.3f}" for c in backtest["checks"]
        ]
        return (
            f"external ({backtest['data']}): " + "; ".join(parts) + f"; mean abs error {backtest['mean_abs_error']:.3f}"
        )
    if backtest.get("kind") == "held_out_groups":
        families = ", ".join(f"{k} {v:.2f}" for k, v in backtest["families"].items())
        regimes = ", ".join(f"{k} {v:.2f}" for k, v in backtest["token_regimes"].items())
        return (
            f"each family left out ({backtest['metric']}): pooled {backtest['families_pooled']:.3f} ({families}); "
            f"each token regime left out: pooled {backtest['token_regimes_pooled']:.3f} ({regimes})"
        )
    origins = backtest.get("origins", [])
    parts = [
        f"fit <= {o['fit_up_to']:.3g} -> {o['predict']:.3g} (x{o['ratio']:.2g}): {o['mean_abs_rel_error']:.2%}"
        for o in origins
    ]
    return "rolling origin over N: " + ("; ".join(parts) or "none")
