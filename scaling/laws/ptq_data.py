"""Published post-training quantisation (PTQ) rows as loss penalties, in canonical columns.

Each row of ``ptq_published.csv`` (loaded by name through :mod:`scaling.laws.datasets`, SHA-256
checked; the file has no licence, so nothing of it is shipped) gives a value before and after a
model is quantised. It becomes:

* ``delta_loss``: the loss penalty ΔL = Δ ln perplexity, in nats/token *of that model's
  tokenizer* (``penalty_unit``). ``ppl`` rows: ln(after / before); ``loss`` rows: after - before;
  ``ppl_ratio`` rows: ln(ratio). ``loss_ratio`` rows give no absolute penalty (NaN).
* ``relative``: ΔL / L, the penalty as a fraction of the loss before (unit-free, so it carries
  across tokenizers). ``ppl`` rows: ln(after/before) / ln(before); ``loss`` rows: ΔL / before;
  ``loss_ratio`` rows: ratio - 1. ``ppl_ratio`` rows give no loss before, so no relative penalty.

A row whose metric is not one of :data:`METRICS`, or whose values are missing or not positive,
is a user error naming the row. The canonical columns also say what the law needs: the method's
class (``rtn``, ``gptq`` or a nuisance class), bits, group size, symmetric or not, active and
total parameters (MoE rows' notes give the active count), training tokens, the evaluation
``setting`` (source and evaluation set: rows compare within one) and the learning-rate
``schedule`` at the checkpoint (``annealed``: a released, end-of-schedule model; ``constant``: a
constant-LR (WSD stable) checkpoint; ``decaying``: an intermediate checkpoint while the LR decays).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from scaling.errors import UserError

METRICS = ("ppl", "loss", "ppl_ratio", "loss_ratio")
REQUIRED = ("source", "model", "family", "params", "quant_method", "bits", "group_size", "eval_set", "metric")
PENALTY_UNIT = "nats/token (each model's own tokenizer and evaluation set)"
UNSPECIFIED_GROUP = 128  # GPTQ/AWQ's default in the repositories whose tables omit it (an assumption)
BLOCK_GROUP = 32  # llama.cpp's q*_0 / q*_1 blocks and the k-quants' sub-blocks
_ACTIVE = re.compile(r"active\s*=?\s*([0-9.]+)\s*B", re.IGNORECASE)


def per_channel_group(params: np.ndarray) -> np.ndarray:
    """A per-channel grid's group: the input width, estimated from N ~ 12 L d^2 with L ~ d / 128
    (LLaMA-7B: 4,200 for 4,096) because the rows do not give d_model."""
    return np.cbrt(np.asarray(params, dtype=float) * 128 / 12)


def method_class(name: str) -> str:
    """``rtn`` and ``gptq`` (the planner's methods), or a nuisance class with its own factor."""
    text = name.lower()
    if text.startswith("gptq"):
        return "gptq"
    if text.startswith("awq"):
        return "awq"
    if text.startswith("omniquant"):
        return "omniquant"
    if text.startswith("quip"):
        return "quip"
    if "llama.cpp" in text:
        plain = re.search(r"\bq[2-8]_[01]\b", text) and "imatrix" not in text
        return "rtn" if plain else "kquant"  # q4_0/q4_1: round-to-nearest in blocks of 32
    if text.startswith("rtn"):
        return "rtn"
    return "other"


def _group(value: str, params: float, klass: str) -> float:
    text = str(value).strip().lower()
    if text.isdigit():
        return float(text)
    if text.startswith("per-channel"):
        return float(per_channel_group(params))
    if text.startswith("block"):
        return float(BLOCK_GROUP)
    return float(BLOCK_GROUP if klass in ("rtn", "kquant") and text == "unspecified" else UNSPECIFIED_GROUP)


def _asymmetric(method: str, note: str) -> float:
    """1 for a grid with zero points: the method says so (``asymmetric``, llama.cpp's q*_1), else the note."""
    method = method.lower()
    if "asymmetric" in method or re.search(r"\bq\d_1\b", method):
        return 1.0
    if "symmetric" in method or re.search(r"\bq\d_0\b", method):
        return 0.0
    return float("asym" in note.lower())


def _schedule(note: str) -> str:
    note = note.lower()
    if "constant-lr" in note or "wsd stable" in note:
        return "constant"
    if "lr decays" in note and "final point" not in note:
        return "decaying"
    return "annealed"


def _penalty(metric: str, before: float, after: float) -> tuple[float, float, float]:
    """ΔL (nats/token), the loss before, ΔL / L: NaN where the metric does not give it."""
    if metric == "ppl":
        return math.log(after / before), math.log(before), math.log(after / before) / math.log(before)
    if metric == "loss":
        return after - before, before, (after - before) / before
    if metric == "ppl_ratio":
        return math.log(after / before), math.nan, math.nan
    return math.nan, math.nan, after / before - 1  # loss_ratio


def convert_ptq(raw: pd.DataFrame, origin: str = "the PTQ rows") -> pd.DataFrame:
    """Canonical penalty rows (see the module docstring) from rows in ``ptq_published.csv``'s columns."""
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        raise UserError(f"{origin} lack column(s) {missing}; the columns are those of ptq_published.csv")
    rows = []
    for index, row in raw.reset_index(drop=True).iterrows():
        where = f"{origin}, row {index + 1} ({row['model']})"
        metric = str(row["metric"]).strip() if pd.notna(row["metric"]) else ""
        if metric not in METRICS:
            raise UserError(
                f"{where}: metric {metric or 'missing'!r} gives no unit; use one of {', '.join(METRICS)} "
                "(ppl: perplexity; loss: nats/token; *_ratio: after / before)"
            )
        before, after = (
            _positive(row.get("fp_value"), where, "fp_value"),
            _positive(row.get("quant_value"), where, "quant_value"),
        )
        params, bits = _positive(row["params"], where, "params"), _positive(row["bits"], where, "bits")
        note = str(row.get("note", "")) if pd.notna(row.get("note")) else ""
        active = _ACTIVE.search(note)
        n_active = float(active.group(1)) * 1e9 if active else params
        klass = method_class(str(row["quant_method"]))
        delta, loss_before, relative = _penalty(metric, before, after)
        tokens = float(row["train_tokens"]) if pd.notna(row.get("train_tokens")) else math.nan
        rows.append(
            {
                "model": row["model"],
                "family": row["family"],
                "source": row["source"],
                "setting": f"{row['source']} | {row['eval_set']}",
                "N": n_active,
                "N_total": params,
                "moe": bool(active) or row["family"] == "MoE",
                "D": tokens,
                "method": klass,
                "method_name": row["quant_method"],
                "bits": bits,
                "group": _group(row["group_size"], params, klass),
                "asym": _asymmetric(str(row["quant_method"]), note),
                "schedule": _schedule(note),
                "metric": metric,
                "delta_loss": delta,
                "loss_before": loss_before,
                "relative": relative,
                "penalty_unit": PENALTY_UNIT,
                "derived": "derived" in note.lower(),
            }
        )
    return pd.DataFrame(rows)


def _positive(value, where: str, column: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {column} {value!r} is not a number") from None
    if not (math.isfinite(number) and number > 0):
        raise UserError(f"{where}: {column} must be a positive number, got {value!r}")
    return number


def ptq_rows(data_dir: str | Path | None = None, path: str | Path | None = None) -> pd.DataFrame:
    """The published PTQ rows (dataset ``ptq_published``), or a CSV of the same columns at ``path``."""
    from scaling.laws import datasets

    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"PTQ rows {str(path)!r} do not exist; give a CSV with ptq_published.csv's columns")
        return convert_ptq(pd.read_csv(path), str(path))
    return convert_ptq(datasets.read_csv("ptq_published", data_dir), "ptq_published.csv")
