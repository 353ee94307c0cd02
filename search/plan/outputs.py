"""What a plan writes to a folder: the front as CSV, an --arch file and a Hugging Face config per
shape, and a Pareto plot (plot data computed apart from drawing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from scaling.shape.arch import ArchSpec
from scaling.shape.hf_config import to_hf_config


def write_outputs(document: dict[str, Any], folder: str | Path) -> list[Path]:
    """CSV of the front, one --arch file and one Hugging Face config per proposed shape, a Pareto plot."""
    folder = Path(folder)
    (folder / "arch").mkdir(parents=True, exist_ok=True)
    rows = [_csv_row(entry) for entry in document["pareto"]]
    written = [folder / "pareto.csv"]
    pd.DataFrame(rows).to_csv(written[0], index=False)
    for entry in document["pareto"]:
        spec = ArchSpec.from_dict(entry["arch"])
        arch_path = folder / "arch" / f"{spec.name}.json"
        arch_path.write_text(json.dumps(entry["arch"], indent=2) + "\n")
        (folder / "arch" / f"{spec.name}.hf-config.json").write_text(json.dumps(to_hf_config(spec), indent=2) + "\n")
        written.append(arch_path)
    written.append(
        draw_pareto(pareto_plot_data(document), folder / "pareto.png", plot_title(document), document.get("loss_unit"))
    )
    return written


def _csv_row(entry: dict[str, Any]) -> dict[str, Any]:
    """One plan entry as flat CSV columns (the interval as two columns; the arch by name)."""
    row = {k: v for k, v in entry.items() if k not in ("arch", "predicted_loss_ci90")}
    if "predicted_loss_ci90" in entry:
        row["predicted_loss_lower"], row["predicted_loss_upper"] = entry["predicted_loss_ci90"]
    return row | {"name": entry["arch"]["name"]}


AXIS_LABELS = {
    "decode_ms": "decode latency (ms per token)",
    "prefill_ms": "prefill latency (ms)",
    "active_flops": "active FLOPs per token",
}


def pareto_plot_data(document: dict[str, Any]) -> pd.DataFrame:
    """The front's first two objectives (loss with its 90% interval), dense or MoE, for the drawing."""
    x, y = document["objectives"][:2]
    column = {"loss": "predicted_loss"}
    entries = document["pareto"]
    data = pd.DataFrame(
        {
            x: [e[column.get(x, x)] for e in entries],
            y: [e[column.get(y, y)] for e in entries],
            "moe": [e["n_experts"] > 1 for e in entries],
            "name": [e["arch"]["name"] for e in entries],
            "p_front": [e.get("p_front", 1.0) for e in entries],
        }
    )
    if "loss" in (x, y) and entries and "predicted_loss_ci90" in entries[0]:
        data["loss_lower"] = [e["predicted_loss_ci90"][0] for e in entries]
        data["loss_upper"] = [e["predicted_loss_ci90"][1] for e in entries]
    return data


def plot_title(document: dict[str, Any]) -> str:
    """Device, budget, precision, training tokens and the loss unit, for every plan plot."""
    precisions = sorted({e.get("scheme", e["precision"]) for e in document["pareto"]})
    return (
        f"{document['device']}, {document['memory_budget_bytes'] / 1e9:.3g} GB, {'/'.join(precisions)}, "
        f"trained on {document['train_tokens']:.2g} {document.get('tokens_unit', 'tokens')}"
    )


def draw_pareto(data: pd.DataFrame, path: Path, title: str = "Pareto front", loss_unit: str | None = None) -> Path:
    """The front, dense and MoE apart, with the loss's 90% interval as error bars when it is an axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = data.columns[:2]
    figure, axes = plt.subplots(figsize=(7.2, 4.8), dpi=120)
    for moe, colour, label in ((False, "tab:grey", "dense"), (True, "tab:blue", "MoE")):
        part = data[data["moe"] == moe].sort_values(x)
        if part.empty:
            continue
        errors = {}
        if "loss_lower" in part:
            axis = "xerr" if x == "loss" else "yerr"
            errors[axis] = [part["loss"] - part["loss_lower"], part["loss_upper"] - part["loss"]]
            label = f"{label} (loss: median and 90% interval)"
        axes.errorbar(part[x], part[y], fmt="o", color=colour, label=label, elinewidth=0.8, capsize=2, **errors)
    axes.set(xlabel=_axis_label(x, loss_unit), ylabel=_axis_label(y, loss_unit), title=title)
    axes.title.set_fontsize(9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _axis_label(objective: str, loss_unit: str | None) -> str:
    if objective == "loss":
        return f"predicted loss ({loss_unit or 'unit not given'})"
    return AXIS_LABELS.get(objective, objective)
