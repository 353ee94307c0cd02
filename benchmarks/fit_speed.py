"""Fitting speed on the real Chinchilla points (240 after the replication's cut), quiet and busy.

Four arms, interleaved so that drifting background load falls on all of them alike:
``quiet``/``busy`` (busy: one busy-loop process per core, as a sweep's workers would be) by
``limited``/``unlimited`` (BLAS held to one thread around the optimiser, the default, or left
to OpenBLAS's own threads: ``MOEPLAN_FIT_BLAS_THREADS=0``). Prints medians per arm, the load
average before and after, and a bootstrap timing on the quiet machine.

Usage: python benchmarks/fit_speed.py [--repeats 5] [--bootstrap 200] [--workers 2] [--busy N]
Targets (issue 33): limited quiet <= 1.5 s, limited busy <= 2.5 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path

import pandas as pd

from scaling.laws.datasets import chinchilla_points
from scaling.laws.fit import fit_law
from scaling.laws.registry import get_law
from scaling.laws.threads import ENV


def _spin() -> None:  # pragma: no cover - runs in a child process until terminated
    while True:
        pass


def _timed_fit(frame: pd.DataFrame, limited: bool) -> float:
    os.environ[ENV] = "1" if limited else "0"
    start = time.perf_counter()
    fit_law(frame, "chinchilla", extrapolate=False)
    return time.perf_counter() - start


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run_arms(frame: pd.DataFrame, repeats: int, busy: int) -> dict[str, list[float]]:
    """Interleaved timings: quiet limited/unlimited, then the same with ``busy`` spinners."""
    arms = [f"{load}_{arm}" for load in ("quiet", "busy") for arm in ("limited", "unlimited")]
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    _timed_fit(frame, True)  # warm caches and imports
    for _ in range(repeats):
        for limited in (True, False):
            times[f"quiet_{'limited' if limited else 'unlimited'}"].append(_timed_fit(frame, limited))
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy)]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(0.5)
        for _ in range(repeats):
            for limited in (True, False):
                times[f"busy_{'limited' if limited else 'unlimited'}"].append(_timed_fit(frame, limited))
    finally:
        for spinner in spinners:
            spinner.terminate()
            spinner.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2, help="busy-loop processes (default: cores)")
    parser.add_argument("--data", default=None, help="folder holding the Chinchilla points (default: $MOEPLAN_DATA)")
    args = parser.parse_args()
    frame = chinchilla_points(args.data)
    load_before = _loadavg()
    times = run_arms(frame, args.repeats, args.busy)
    os.environ[ENV] = "1"
    start = time.perf_counter()
    booted = fit_law(frame, "chinchilla", extrapolate=False, bootstrap=args.bootstrap, workers=args.workers)
    bootstrap_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "points": len(frame),
                "starts": len(get_law("chinchilla").init_grid()),
                "cores": os.cpu_count(),
                "busy_processes": args.busy,
                "loadavg_before": load_before,
                "loadavg_after": _loadavg(),
                "median_s": {arm: round(statistics.median(values), 3) for arm, values in times.items()},
                "all_s": {arm: [round(v, 3) for v in values] for arm, values in times.items()},
                "bootstrap_replicates": args.bootstrap,
                "bootstrap_workers": args.workers,
                "bootstrap_s": round(bootstrap_s, 3),
                "params": booted.params.to_dict(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
