"""Cost-model speed: one predict() call, the vectorised form, and latency draws.

Usage: python benchmarks/cost_speed.py [--shapes N] [--repeats R]

Times (median of repeats, after one warm-up):
* ``predict`` on one ArchSpec, on an uncalibrated backend and on a calibrated one (which adds
  90% intervals from 1000 draws); the target is under 50 ms a call.
* ``predict`` on N shapes at once (ArchArrays, every MoE term on); the target is at least
  100k shapes a second.
* ``latency_samples`` on N shapes x 64 draws on a calibrated backend.
On a shared machine other tenants' load slows every figure; say so when quoting them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from scaling.shape.accounting import ArchArrays
from scaling.shape.presets import get_preset
from search.device.cost import latency_samples, predict
from search.device.profiles import get_device

SHAPES = ("phone-moe-a0.3b", "phone-dense-1.5b", "olmoe-1b-7b", "qwen3-0.6b", "qwen1.5-moe-a2.7b")


def timed(call, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    spec = get_preset("phone-moe-a0.3b")
    prior = get_device("iphone-16-pro")  # gpu, uncalibrated
    calibrated = get_device("galaxy-s25", "cpu")
    many = ArchArrays.from_specs([get_preset(n) for n in SHAPES] * (args.shapes // len(SHAPES)))
    single_prior = timed(lambda: predict(spec, prior, "int4", 512, 1024), args.repeats * 20)
    single_calibrated = timed(lambda: predict(spec, calibrated, "int4", 512, 1024), args.repeats * 20)
    vectorised = timed(lambda: predict(many, calibrated, "int4", 512, 1024), args.repeats)
    draws = timed(
        lambda: latency_samples(many, calibrated, prompt_tokens=512, context_tokens=1024, n_samples=64),
        max(1, args.repeats // 2),
    )
    print(
        json.dumps(
            {
                "predict_ms_uncalibrated": 1e3 * single_prior,
                "predict_ms_calibrated_with_intervals": 1e3 * single_calibrated,
                "vectorised_shapes": len(many),
                "vectorised_shapes_per_s": len(many) / vectorised,
                "latency_samples_shapes_per_s_64_draws": len(many) / draws,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
