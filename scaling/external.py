"""Loaders that put published training-run datasets into moeplan's canonical columns.

The files live in ``../shared/data/external/`` (see its README for their origin); nothing
from them is copied into the code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import UserError

DEFAULT_FOLDER = Path(
    os.environ.get("MOEPLAN_EXTERNAL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "external"
)


def _read(name: str, folder: str | Path | None) -> pd.DataFrame:
    path = Path(folder or DEFAULT_FOLDER) / name
    if not path.is_file():
        raise UserError(f"external dataset {str(path)!r} is missing")
    return pd.read_csv(path)


def chinchilla_points(folder: str | Path | None = None, drop_highest: int = 5) -> pd.DataFrame:
    """Hoffmann et al. Figure 4 points (Epoch AI's extraction): N, C, D = C/(6N), loss.

    The replication (Besiroglu et al. 2024) drops the 5 points with the highest loss.
    """
    raw = _read("chinchilla_fig4_points.csv", folder)
    frame = pd.DataFrame({"N": raw["Model Size"], "C": raw["Training FLOP"], "loss": raw["loss"]})
    frame["D"] = frame["C"] / (6 * frame["N"])
    frame = frame.sort_values("loss")
    return frame.iloc[: len(frame) - drop_highest].reset_index(drop=True)


def routed_moe_runs(
    folder: str | Path | None = None,
    routers: tuple[str, ...] = ("Dense", "S-Base"),
    checkpoints: str = "final",
    min_step: int = 50_000,
) -> pd.DataFrame:
    """Clark et al.-style routed runs: N (dense-equivalent), N_total, E, G=1, D, C, loss, run.

    D is C / (6 N) with C = flops_per_step x step. ``checkpoints="final"`` keeps each run's
    last checkpoint; ``"all"`` keeps checkpoints from ``min_step`` on.
    """
    raw = _read("routed_moe_runs.csv", folder)
    raw = raw[raw["router_type"].isin(routers) & raw["loss_validation"].notna()]
    final = checkpoints == "final"
    raw = raw.loc[raw.groupby("hyper_id")["step"].idxmax()] if final else raw[raw["step"] >= min_step]
    compute = raw["flops_per_step"] * raw["step"]
    frame = pd.DataFrame(
        {
            "N": raw["dense_parameter_count"],
            "N_total": raw["total_parameter_count"],
            "E": raw["num_experts"].astype(float),
            "G": 1.0,
            "S": 0.0,
            "C": compute,
            "D": compute / (6 * raw["dense_parameter_count"]),
            "loss": raw["loss_validation"],
            "run": raw["hyper_id"],
            "router": raw["router_type"],
            "size_label": raw["model_size_label"],
            "step": raw["step"],
        }
    )
    return frame.reset_index(drop=True)


def overtraining_runs(
    folder: str | Path | None = None, dataset: str = "c4_original", loss: str = "loss_c4_val"
) -> pd.DataFrame:
    """Gadre et al. 2024 open_lm runs: N, D, C = 6 N D, loss on one validation set."""
    raw = _read("overtraining_openlm_runs.csv", folder)
    raw = raw[raw["dataset_name"] == dataset]
    frame = pd.DataFrame({"N": raw["params"], "D": raw["tokens"], "loss": raw[loss]})
    frame["C"] = 6 * frame["N"] * frame["D"]
    return frame[np.isfinite(frame["loss"])].reset_index(drop=True)
