"""Host check of the cost model: calibrate on search.host's shapes, then predict 8 others.

Usage: python benchmarks/cost_model_accuracy.py
Prints measured against predicted prefill ms and decode tokens/s (torch backend, fp32, CPU)
for 8 architectures, dense and MoE, none of them used in calibration, and the MAPE of each.
"""

from __future__ import annotations

import json

from scaling.arch import ArchSpec
from search.calibrate import evaluate
from search.host import calibrate_host, measure

HELD_OUT = [
    ArchSpec(name="dense-d384-l4", vocab_size=2000, d_model=384, n_layers=4, n_heads=6, d_ff=1536),
    ArchSpec(name="dense-d640-l6-gqa", vocab_size=8000, d_model=640, n_layers=6, n_heads=10, n_kv_heads=2, d_ff=1792),
    ArchSpec(name="dense-d896-l6", vocab_size=16000, d_model=896, n_layers=6, n_heads=14, d_ff=2432),
    ArchSpec(name="dense-d512-l10", vocab_size=4000, d_model=512, n_layers=10, n_heads=8, d_ff=1408),
    ArchSpec(name="moe-d384-e4", vocab_size=2000, d_model=384, n_layers=4, n_heads=6, d_ff=768, n_experts=4, top_k=1),
    ArchSpec(
        name="moe-d640-e8-shared",
        vocab_size=8000,
        d_model=640,
        n_layers=6,
        n_heads=10,
        d_ff=1280,
        n_experts=8,
        top_k=2,
        n_shared_experts=1,
    ),
    ArchSpec(
        name="moe-d512-e16-g2",
        vocab_size=4000,
        d_model=512,
        n_layers=6,
        n_heads=8,
        d_ff=1024,
        n_experts=16,
        top_k=1,
        granularity=2,
    ),
    ArchSpec(
        name="moe-d896-e8-g4",
        vocab_size=16000,
        d_model=896,
        n_layers=4,
        n_heads=14,
        d_ff=2048,
        n_experts=8,
        top_k=1,
        granularity=4,
        n_shared_experts=1,
    ),
]


def main() -> None:
    calibration = calibrate_host("host-benchmark")
    specs, frame = measure(HELD_OUT, prompts=(128,), decode_tokens=8, repeats=3)
    table = evaluate(calibration.profile, specs, frame)
    columns = [
        "arch",
        "measured_prefill_ms",
        "predicted_prefill_ms",
        "measured_decode_tokens_per_s",
        "predicted_decode_tokens_per_s",
    ]
    print(table[columns].round(1).to_string(index=False))
    print(
        json.dumps(
            {
                "calibration_prefill_mape": calibration.prefill_mape,
                "calibration_decode_mape": calibration.decode_mape,
                "held_out_prefill_mape": float(table["prefill_error"].abs().mean()),
                "held_out_decode_mape": float(table["decode_error"].abs().mean()),
                "fitted": {
                    k: calibration.profile.get(k, 0.0)
                    for k in (
                        "efficiency.compute",
                        "efficiency.bandwidth",
                        "efficiency.half_tokens",
                        "overheads.per_layer_s",
                        "overheads.per_forward_s",
                        "overheads.per_expert_s",
                    )
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
