"""What a plan writes to a folder: the front as CSV, an --arch file and a Hugging Face config per
shape, and a Pareto plot (plot data computed apart from drawing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from scaling.shape.arch import ArchSpec
from scaling.shape.hf_config import to_hf_config

if TYPE_CHECKING:
    from search.plan.result import PlanResult


def write_outputs(result: PlanResult, folder: str | Path, highlight: int | None = None) -> list[Path]:
    """CSV of the front, one --arch file and one Hugging Face config per proposed shape, a Pareto plot."""
    folder = Path(folder)
    (folder / "arch").mkdir(parents=True, exist_ok=True)
    rows = [_csv_row(entry) for entry in result.pareto]
    written = [folder / "pareto.csv"]
    pd.DataFrame(rows).to_csv(written[0], index=False)
    for entry in result.pareto:
        spec = ArchSpec.from_dict(entry["arch"])
        arch_path = folder / "arch" / f"{spec.name}.json"
        arch_path.write_text(json.dumps(entry["arch"], indent=2) + "\n")
        (folder / "arch" / f"{spec.name}.hf-config.json").write_text(json.dumps(to_hf_config(spec), indent=2) + "\n")
        written.append(arch_path)
    written.append(
        draw_pareto(
            result.plot_data(),
            folder / "pareto.png",
            plot_title(result),
            result.loss_unit,
            highlight,
        )
    )
    return written


def _csv_row(entry: dict[str, Any]) -> dict[str, Any]:
    """One plan entry as flat CSV columns (the interval as two columns; the arch by name)."""
    row = {k: v for k, v in entry.items() if k not in ("arch", "predicted_loss_ci90", "expansion")}
    if "predicted_loss_ci90" in entry:
        row["predicted_loss_lower"], row["predicted_loss_upper"] = entry["predicted_loss_ci90"]
    return row | {"name": entry["arch"]["name"]}


AXIS_LABELS = {
    "decode_ms": "decode latency (ms per token, log scale)",
    "prefill_ms": "prefill latency (ms, log scale)",
    "active_flops": "active FLOPs per token",
}


def budget_text(result: PlanResult) -> str:
    """The request's bounds as a planner gave them: weights first when bounded, then peak memory."""
    parts = []
    if result.max_weight_bytes is not None:
        parts.append(f"weights <= {result.max_weight_bytes / 1e9:.2f} GB")
    parts.append(f"peak memory <= {result.memory_budget_bytes / 1e9:.2f} GB")
    if result.max_decode_ms is not None:
        parts.append(f"decode <= {result.max_decode_ms:g} ms/token")
    if result.max_active_params is not None:
        parts.append(f"active <= {result.max_active_params:.3g} parameters")
    return ", ".join(parts)


def plot_title(result: PlanResult) -> str:
    """Device, backend, the request's budget, precision, training tokens, for every plan plot."""
    precisions = sorted({e.get("scheme") or e["precision"] for e in result.pareto})
    return (
        f"{result.device} ({result.backend}), {budget_text(result)}, {'/'.join(precisions)}, "
        f"trained on {result.train_tokens:.2g} {result.tokens_unit}"
    )


LABELLED = 12  # at most this many points carry their number (the report's table names every one)


def draw_pareto(
    data: pd.DataFrame,
    path: Path,
    title: str = "Pareto front",
    loss_unit: str | None = None,
    highlight: int | None = None,
) -> Path:
    """The front: dense squares and MoE circles coloured by ``p_front``, the loss's 90% interval,
    the latency's where calibrated, latency on a log axis (the fast end spread out), numbered points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = data.columns[:2]
    figure, axes = plt.subplots(figsize=(8.0, 5.2), dpi=120)
    norm = matplotlib.colors.Normalize(0, 1)
    for moe, marker, label in ((False, "s", "dense"), (True, "o", "MoE")):
        part = data[data["moe"] == moe]
        if part.empty:
            continue
        latency = next((o for o in (x, y) if o in ("decode_ms", "prefill_ms")), "")
        for column, lower, upper in (("loss", "loss_lower", "loss_upper"), (latency, "latency_lower", "latency_upper")):
            if lower in part and column in (x, y):
                errors = {("xerr" if column == x else "yerr"): [part[column] - part[lower], part[upper] - part[column]]}
                axes.errorbar(part[x], part[y], **errors, fmt="none", ecolor="0.65", elinewidth=0.7, capsize=1.5,
                              zorder=1)  # fmt: skip
        points = axes.scatter(part[x], part[y], c=part["p_front"], cmap="viridis", norm=norm, marker=marker, s=36,
                              edgecolors="black", linewidths=0.5, label=label, zorder=2)  # fmt: skip
    figure.colorbar(points, ax=axes, label="p_front (share of the law's samples on the front)")
    step = max(1, -(-len(data) // LABELLED))
    for row in data.itertuples():
        if (row.number - 1) % step == 0 or row.number == highlight:
            weight = "bold" if row.number == highlight else "normal"
            axes.annotate(str(row.number), (getattr(row, x), getattr(row, y)), xytext=(3, 3),
                          textcoords="offset points", fontsize=7, fontweight=weight)  # fmt: skip
    for name, setter in ((x, axes.set_xscale), (y, axes.set_yscale)):
        if name in ("decode_ms", "prefill_ms", "active_flops"):
            setter("log")
    interval = "loss: median, 90% interval" + (
        "; latency: 90% interval" if "latency_lower" in data else "; latency: point prior (uncalibrated, no interval)"
    )
    axes.set(xlabel=_axis_label(x, loss_unit), ylabel=_axis_label(y, loss_unit), title=f"{title}\n{interval}")
    axes.title.set_fontsize(8)
    axes.legend(fontsize=8, title="numbers: the report's table", title_fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _axis_label(objective: str, loss_unit: str | None) -> str:
    if objective == "loss":
        return f"predicted loss ({loss_unit or 'unit not given'})"
    return AXIS_LABELS.get(objective, objective)
