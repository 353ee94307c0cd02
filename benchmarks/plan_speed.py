"""Search speed: the exhaustive front over a space of 100k+ shapes with 200 loss-law samples each
(intervals and p_front included; target <= 10 s on 2 cores), and a 500-trial Optuna study.

Usage: python benchmarks/plan_speed.py [--samples 200]
"""

from __future__ import annotations

import argparse
import json
import time

from search.device.profiles import get_device
from search.plan.planner import plan
from search.plan.request import PlanRequest
from search.plan.space import SearchSpace

BIG = SearchSpace(
    n_layers=(6, 8, 10, 12, 14, 16, 18, 20, 24, 28, 32, 36),
    d_model=(384, 512, 640, 768, 896, 1024, 1280, 1536, 1792, 2048, 2304, 2560),
    n_experts=(1, 2, 4, 8, 16, 32, 64, 128),
    top_k=(1, 2, 4, 8),
    granularity=(1, 2, 4, 8),
    n_shared_experts=(0, 1),
    ffn_ratio=(2.0, 2.75, 3.5, 4.0),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    device = get_device("iphone-16-pro")
    start = time.perf_counter()
    exhaustive = plan(
        PlanRequest(device=device, memory_budget_bytes=2e9, space=BIG, exhaustive=True, samples=args.samples)
    )
    exhaustive_s = time.perf_counter() - start
    start = time.perf_counter()
    searched = plan(PlanRequest(device=device, memory_budget_bytes=1.5e9, trials=500, engine="optuna"))
    optuna_s = time.perf_counter() - start
    print(
        json.dumps(
            {
                "exhaustive_shapes": exhaustive["space_size"],
                "feasible_shapes": exhaustive["feasible_shapes"],
                "loss_samples": exhaustive["loss_samples"],
                "exhaustive_s": exhaustive_s,
                "exhaustive_shapes_per_s": exhaustive["space_size"] / exhaustive_s,
                "optuna_trials": searched["n_trials"],
                "optuna_s": optuna_s,
                "optuna_hypervolume_share": searched["hypervolume"] / searched["exact_hypervolume"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
