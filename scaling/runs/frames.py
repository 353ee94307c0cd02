"""Pandas views of a run store, for notebooks, exports and fits.

:func:`runs_frame` (one row per run with every config field), :func:`metrics_frame` (the loss
curves), :func:`fit_frame` (the canonical fit columns: N, N_total, E, G, S, D, C, loss) and
:func:`quantization_frame` (one row per quantised run, scheme and method, with the run's columns).
"""

from __future__ import annotations

import json

import pandas as pd

from scaling.runs.store import RunStore

PROXY_LOSS_UNIT = "nats/byte"  # byte-level proxies: a loss per UTF-8 byte


def runs_frame(store: RunStore | str | None = None) -> pd.DataFrame:
    """One row per run: the store's columns plus every architecture and training field."""
    store = store if isinstance(store, RunStore) else RunStore(store, create=False, read_only=True)
    rows = []
    for run in store.runs():
        config = json.loads(run["config"])
        rows.append(
            {
                **{k: v for k, v in run.items() if k not in ("config",)},
                **{f"arch.{k}": v for k, v in config["arch"].items()},
                **{f"train.{k}": v for k, v in config["train"].items()},
            }
        )
    return pd.DataFrame(rows)


def metrics_frame(store: RunStore | str | None = None) -> pd.DataFrame:
    store = store if isinstance(store, RunStore) else RunStore(store, create=False, read_only=True)
    return pd.DataFrame(store.metrics())


def fit_frame(store: RunStore | str | None = None, finished_only: bool = True) -> pd.DataFrame:
    """The canonical fit columns per run, then every store column and config field.

    Canonical columns: ``N`` (active parameters), ``N_total``, ``E`` (expansion), ``G``,
    ``k`` (top-k at G = 1), ``S`` (shared experts), ``D`` (tokens), ``C`` (training FLOPs),
    ``loss`` (final validation loss) and ``loss_unit``: the proxies read UTF-8 bytes, so their
    losses are in nats per byte.
    """
    frame = runs_frame(store)
    if frame.empty:
        return frame
    if finished_only:
        frame = frame[frame["status"] == "finished"]
    canonical = pd.DataFrame(
        {
            "N": frame["active_params"],
            "N_total": frame["total_params"],
            "E": frame["n_experts"],
            "G": frame["granularity"],
            "k": frame["top_k"],
            "S": frame["n_shared_experts"],
            "D": frame["tokens"],
            "C": frame["flops"],
            "loss": frame["final_val_loss"],
            "loss_unit": PROXY_LOSS_UNIT,
            "run": frame["id"],
        }
    )
    return pd.concat([canonical, frame.drop(columns=["id"])], axis=1).reset_index(drop=True)


SHAPE_COLUMNS = ("N", "N_total", "E", "G", "k", "S", "D", "C", "loss_unit")


def aggregate_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, SD and count of the final loss over seeds, per sweep, stage, shape and budget.

    Args:
        frame: A :func:`fit_frame` (finished runs).
    """
    if frame.empty:
        return frame
    arch_columns = sorted(c for c in frame.columns if c.startswith("arch.") and c != "arch.name")
    keyed = frame.assign(shape_key=frame[arch_columns].astype(str).agg("|".join, axis=1))
    groups = keyed.groupby(["sweep", "stage", "shape_key", "D"], sort=False, dropna=False)
    summary = groups.agg(
        **{column: (column, "first") for column in SHAPE_COLUMNS if column != "D"},
        arch_name=("arch_name", "first"),
        lr=("lr", "first"),
        loss_mean=("loss", "mean"),
        loss_sd=("loss", "std"),
        n_seeds=("loss", "count"),
        collapsed_runs=("collapsed", lambda values: int((values.fillna(0) > 0).sum())),
    )
    return summary.reset_index().drop(columns=["shape_key"])


def quantization_frame(store: RunStore | str | None = None) -> pd.DataFrame:
    """One row per stored quantisation, with the canonical columns of its run.

    Columns: ``run``, ``scheme``, ``method``, ``bits``, ``group_size``, ``symmetric``, ``parts``,
    ``loss_before``, ``loss_after``, ``delta_loss`` (after - before), ``packed_weight_bytes``,
    ``quantised_params``, ``scheme_spec`` (every part's format, as a dict), ``arch`` (the run's
    shape, as a dict), ``N``, ``N_total``, ``E``, ``G``, ``k``, ``S``, ``D``, ``d_model``,
    ``seed``, ``sweep``, ``loss_unit`` (nats/byte). The input of
    :func:`scaling.laws.quant_penalty.fit_quant_penalty`.
    """
    store = store if isinstance(store, RunStore) else RunStore(store, create=False, read_only=True)
    runs = {run["id"]: run for run in store.runs()}
    rows = []
    for row in store.quantizations():
        run = runs.get(row["run_id"])
        if run is None:
            continue
        arch = json.loads(run["config"])["arch"]
        rows.append(
            {
                "run": row["run_id"],
                **{key: row[key] for key in ("scheme", "method", "bits", "group_size", "symmetric", "parts")},
                "loss_before": row["loss_before"],
                "loss_after": row["loss_after"],
                "delta_loss": row["loss_after"] - row["loss_before"],
                "packed_weight_bytes": row["packed_weight_bytes"],
                "quantised_params": row["quantised_params"],
                "scheme_spec": row["scheme_spec"],
                "arch": arch,
                "N": run["active_params"],
                "N_total": run["total_params"],
                "E": run["n_experts"],
                "G": run["granularity"],
                "k": run["top_k"],
                "S": run["n_shared_experts"],
                "D": run["tokens"],
                "d_model": arch["d_model"],
                "seed": run["seed"],
                "sweep": run["sweep"],
                "loss_unit": PROXY_LOSS_UNIT,
            }
        )
    return pd.DataFrame(rows)
