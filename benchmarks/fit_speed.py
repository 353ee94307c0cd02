"""Fitting speed on the real Chinchilla points: the 4,500-start fit and a 1,000-replicate bootstrap.

Usage: python benchmarks/fit_speed.py [--repeats 7] [--bootstrap 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pandas as pd

from scaling.laws.fit import fit_law
from scaling.laws.registry import get_law

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "external" / "chinchilla_fig4_points.csv"


def chinchilla_points(path: Path = DATA) -> pd.DataFrame:
    """Epoch AI's extraction of Hoffmann et al.'s Figure 4, as the replication used it."""
    frame = pd.read_csv(path).rename(columns={"Model Size": "N", "Training FLOP": "C"})
    frame["D"] = frame["C"] / (6 * frame["N"])
    return frame.sort_values("loss").iloc[:-5].reset_index(drop=True)  # drop the 5 highest losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    frame = chinchilla_points(args.data)
    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fit = fit_law(frame, "chinchilla", extrapolate=False)
        timings.append(time.perf_counter() - start)
    start = time.perf_counter()
    booted = fit_law(frame, "chinchilla", extrapolate=False, bootstrap=args.bootstrap, workers=args.workers)
    bootstrap_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "points": len(frame),
                "starts": len(get_law("chinchilla").init_grid()),
                "fit_s_median": statistics.median(timings),
                "fit_s_all": timings,
                "bootstrap_replicates": args.bootstrap,
                "bootstrap_workers": args.workers,
                "bootstrap_s": bootstrap_s,
                "params": fit.params.to_dict(),
                "ci95": booted.conf_int().to_dict(orient="index"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
