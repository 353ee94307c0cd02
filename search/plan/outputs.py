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
    rows = [
        {k: v for k, v in entry.items() if k != "arch"} | {"name": entry["arch"]["name"]}
        for entry in document["pareto"]
    ]
    written = [folder / "pareto.csv"]
    pd.DataFrame(rows).to_csv(written[0], index=False)
    for entry in document["pareto"]:
        spec = ArchSpec.from_dict(entry["arch"])
        arch_path = folder / "arch" / f"{spec.name}.json"
        arch_path.write_text(json.dumps(entry["arch"], indent=2) + "\n")
        (folder / "arch" / f"{spec.name}.hf-config.json").write_text(json.dumps(to_hf_config(spec), indent=2) + "\n")
        written.append(arch_path)
    written.append(draw_pareto(pareto_plot_data(document), folder / "pareto.png"))
    return written


def pareto_plot_data(document: dict[str, Any]) -> pd.DataFrame:
    """The front's first two objectives, dense or MoE, for the drawing."""
    x, y = document["objectives"][:2]
    column = {"loss": "predicted_loss"}
    return pd.DataFrame(
        {
            x: [e[column.get(x, x)] for e in document["pareto"]],
            y: [e[column.get(y, y)] for e in document["pareto"]],
            "moe": [e["n_experts"] > 1 for e in document["pareto"]],
            "name": [e["arch"]["name"] for e in document["pareto"]],
        }
    )


def draw_pareto(data: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = data.columns[:2]
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for moe, colour, label in ((False, "tab:grey", "dense"), (True, "tab:blue", "MoE")):
        part = data[data["moe"] == moe].sort_values(x)
        axes.plot(part[x], part[y], "o", color=colour, label=label)
    axes.set(xlabel=x, ylabel=y, title="Pareto front")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
