"""Leave-one-model-out on the published rows, per shipped profile and backend, and the NPU rows.

Runs the same with any checkout of the code (``PYTHONPATH`` picks it), so main's table and the
branch's are made by one script. Needs ``MOEPLAN_DATA`` with ``../shared/data/devices``.

    MOEPLAN_DATA=/work/shared/data/devices .venv/bin/python benchmarks/llamacpp_published_lofo.py
"""

from __future__ import annotations

import json
import math

from scaling.errors import UserError
from scaling.laws.datasets import locate
from search.device.backend_fit import calibrate_backend, row_seconds
from search.device.measurements import load_measurements, read_measurements
from search.device.profiles import BACKENDS, get_device


def _prior(soc: str, backend: str):
    """The shipped profile whose chip family the rows ran on: Snapdragon on the Galaxy, else the iPhone."""
    return get_device("galaxy-s25" if "Snapdragon" in soc else "iphone-16-pro", backend)


def lofo_table() -> list[dict]:
    """Per backend and SoC with parseable published rows: models, rows, LOFO and in-sample MAPE."""
    table = load_measurements(locate("phone_measurements"))
    out = []
    for backend in BACKENDS:
        for soc in sorted(set(table["soc"].astype(str))):
            try:
                rows = read_measurements(table, backend, (soc,))
                fit = calibrate_backend(_prior(soc, backend), rows) if rows else None
            except UserError as error:
                out.append({"backend": backend, "soc": soc, "refused": str(error)})
                continue
            if fit is None:
                continue
            in_sample = {q: _mape(fit.table, q) for q in ("prefill", "decode")}
            models = sorted({r.arch.name for r in rows})
            out.append({"backend": backend, "soc": soc, "rows": sorted({r.row for r in rows}), "models": models,
                        "loo_mape": fit.loo_mape, "in_sample": in_sample})  # fmt: skip
    return out


def _mape(frame, quantity: str) -> float | None:
    values = frame[f"{quantity}_error"].abs().dropna()
    return float(values.mean()) if len(values) else None


def npu_rows() -> list[dict]:
    """Each published NPU row against the shipped NPU profile (uncalibrated on that row: the priors)."""
    table = load_measurements(locate("phone_measurements"))
    profile = get_device("galaxy-s25", "npu")
    rows = read_measurements(table, "npu", profile.socs)
    prefill, decode = row_seconds(profile, rows)
    return [{"row": r.row, "model": r.arch.name, "measured_decode_tok_s": r.decode_tokens_per_s,
             "predicted_decode_tok_s": 1 / d, "measured_prefill_ms": r.prefill_ms,
             "predicted_prefill_ms": p * 1e3 if math.isfinite(p) else None}
            for r, p, d in zip(rows, prefill, decode, strict=True)]  # fmt: skip


if __name__ == "__main__":
    print(json.dumps({"lofo": lofo_table(), "npu": npu_rows()}, indent=1, default=float))
