"""``moeplan devices calibrate --runtime llamacpp``: fit this machine's profile on llama.cpp timings.

The same fit as the torch calibration (:func:`search.device.calibrate.calibrate`), on the
shapes of :data:`search.app.host.CALIBRATION_SHAPES` exported to llama.cpp at q4_0 and timed
in interleaved rounds (a slow spell of the shared machine then hits every shape alike).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd

from scaling.export.gguf_writer import write_gguf
from scaling.shape.arch import ArchSpec
from search.app import llamacpp_runtime
from search.app.host import CALIBRATION_SHAPES, host_profile, measurement_row
from search.device.calibrate import Calibration, calibrate

PROMPTS = (32, 128)
DECODE_TOKENS = 16


def measure_llamacpp(
    shapes: list[ArchSpec],
    folder: str,
    type_name: str = "q4_0",
    prompts: tuple[int, ...] = PROMPTS,
    repeats: int = 3,
    deadline: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[ArchSpec], pd.DataFrame]:
    """Median prefill ms and decode tok/s of each shape and prompt, in rows for :func:`calibrate`."""
    import torch

    models = []
    for spec in shapes:
        result = write_gguf(spec, f"{folder}/{spec.name}.gguf", type_name)
        models.append(llamacpp_runtime.load(result.path, n_ctx=max(prompts) + DECODE_TOKENS + 8, n_batch=max(prompts)))
    prompt = [int(t) % 256 for t in torch.randint(0, 256, (max(prompts),), generator=torch.Generator().manual_seed(0))]
    cells = [(index, p) for index in range(len(shapes)) for p in prompts]
    timings: list[list[tuple[float, float]]] = [[] for _ in cells]
    for round_index in range(repeats + 1):
        if round_index > 1 and deadline is not None and time.perf_counter() > deadline:
            break
        for cell, (index, p) in enumerate(cells):
            sample = llamacpp_runtime.time_once(models[index], prompt[:p], DECODE_TOKENS)
            if round_index > 0:
                timings[cell].append(sample)
        if progress is not None:
            progress("measuring rounds (llama.cpp)", round_index + 1, repeats + 1)
    precision = {"f32": "fp32", "f16": "fp16", "q8_0": "int8", "q4_0": "int4"}[type_name]
    rows = [
        measurement_row(shapes[index].name, precision, p, DECODE_TOKENS, timing)
        for (index, p), timing in zip(cells, timings, strict=True)
    ]
    return [shapes[index] for index, _ in cells], pd.DataFrame(rows)


def calibrate_llamacpp_host(
    name: str = "host-llamacpp", budget_s: float = 90.0, progress: Callable[[str, int, int], None] | None = None
) -> Calibration:
    """Measure this machine's peaks, time the calibration shapes in llama.cpp (q4_0), fit."""
    import tempfile

    start = time.perf_counter()
    profile = host_profile(name)
    with tempfile.TemporaryDirectory(prefix="moeplan-llamacpp-") as folder:
        specs, frame = measure_llamacpp(CALIBRATION_SHAPES, folder, deadline=start + 0.7 * budget_s, progress=progress)
    return calibrate(
        profile, specs, frame, name=name, source="calibrated on llama.cpp (q4_0) by moeplan on this machine"
    )
