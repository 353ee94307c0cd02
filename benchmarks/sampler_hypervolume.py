"""Optuna samplers on the large space (:mod:`search.plan.large_space`): hypervolume against trials.

Each sampler runs ``--seeds`` studies of ``--trials`` trials (loss and decode latency, memory
within the budget as a constraint). The true front of a space of ~10^12 combinations is
unknown, so the reference is the best front found across all runs: objectives are normalised
over every feasible trial of every run (as :func:`search.plan.pareto.hypervolume` normalises
over the feasible space) and each run's hypervolume is reported as a share of that union
front's. Prints and writes medians with the min-max over seeds at each checkpoint, with the
seconds per run and the load average before and after.

Usage: nice -n 10 python benchmarks/sampler_hypervolume.py [--trials 1000] [--seeds 3]
       [--samplers nsga2,nsga2-tuned,nsga3,tpe,random,qmc[,gp]] [--gp-trials 20]
       [--out docs/sampler_hypervolume.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from search.device.profiles import get_device
from search.plan.large_search import hypervolume_curve, search_large
from search.plan.large_space import LargeSpace
from search.plan.pareto import hypervolume
from search.plan.request import PlanRequest

OBJECTIVES = ("loss", "decode_ms")
CHECKPOINTS = (50, 100, 200, 500, 1000)


def _load() -> str:
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "n/a"


def _gp_search(request: PlanRequest):
    """Optuna's GPSampler (it needs torch, so it is offered here and not by search/plan)."""
    import optuna

    return search_large(request, optuna.samplers.GPSampler(seed=request.seed))


def run(args) -> dict:
    device = get_device(args.device)
    results, histories = {}, {}
    load_before = _load()
    for sampler in args.samplers:
        trials = args.gp_trials if sampler == "gp" else args.trials
        for seed in range(args.seeds):
            request = PlanRequest(
                device=device,
                memory_budget_bytes=args.memory_gb * 1e9,
                objectives=OBJECTIVES,
                space=LargeSpace().validated(),
                trials=trials,
                samples=args.samples,
                seed=seed,
            ).validated()
            start = time.perf_counter()
            found = _gp_search(request) if sampler == "gp" else search_large(request, sampler)
            seconds = time.perf_counter() - start
            histories[(sampler, seed)] = found.history
            results.setdefault(sampler, []).append({"seed": seed, "trials": found.n_trials, "seconds": seconds})
            print(f"{sampler} seed {seed}: {found.n_trials} trials in {seconds:.1f} s", flush=True)
    feasible = np.vstack([h.loc[h["feasible"], list(OBJECTIVES)].to_numpy(float) for h in histories.values()])
    low, high = feasible.min(axis=0), feasible.max(axis=0)
    reference = hypervolume(feasible, low, high)
    table = {}
    for sampler, runs in results.items():
        checkpoints = [n for n in CHECKPOINTS if n <= runs[0]["trials"]]
        curves = (
            np.array(
                [hypervolume_curve(histories[(sampler, r["seed"])], OBJECTIVES, low, high, checkpoints) for r in runs]
            )
            / reference
        )
        table[sampler] = {
            str(n): {"median": float(np.median(curves[:, i])), "min": float(curves[:, i].min()),
                     "max": float(curves[:, i].max())}
            for i, n in enumerate(checkpoints)
        }  # fmt: skip
        table[sampler]["seconds_per_run"] = float(np.median([r["seconds"] for r in runs]))
    return {
        "space_size": LargeSpace().size(),
        "device": args.device,
        "memory_gb": args.memory_gb,
        "objectives": list(OBJECTIVES),
        "loss_samples": args.samples,
        "seeds": args.seeds,
        "reference": "the union front of every feasible trial of every run (the true front is unknown)",
        "reference_hypervolume": reference,
        "hypervolume_share": table,
        "load_before": load_before,
        "load_after": _load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--gp-trials", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=64, help="loss samples per shape (the median is the objective)")
    parser.add_argument("--device", default="galaxy-s25")
    parser.add_argument("--memory-gb", type=float, default=4.0)
    parser.add_argument("--samplers", default="nsga2,nsga2-tuned,nsga3,tpe,random,qmc")
    parser.add_argument("--out", default="docs/sampler_hypervolume.json")
    args = parser.parse_args()
    args.samplers = args.samplers.split(",")
    document = run(args)
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    for sampler, row in document["hypervolume_share"].items():
        cells = [f"{n}: {v['median']:.3f} [{v['min']:.3f}, {v['max']:.3f}]" for n, v in row.items() if n.isdigit()]
        print(f"{sampler:12s} " + "  ".join(cells) + f"  ({row['seconds_per_run']:.1f} s/run)")
    print(f"load {document['load_before']} -> {document['load_after']}")


if __name__ == "__main__":
    main()
