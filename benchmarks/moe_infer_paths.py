"""The MoE layer's inference paths side by side, per shape regime: the evidence for ``moe_infer.CPU_PATHS``.

Usage: python benchmarks/moe_infer_paths.py [CONFIG.json ...] [--tokens 1,64,256,1024] [--rounds 30]
           [--paths native,grouped,sorted,off] [--threads N] [--out FILE.json]

Times one MoE layer of each config (default: the OLMoE-, Mixtral- and Qwen-MoE-style configs in
benchmarks/configs/) under ``torch.inference_mode`` on random rows, for each path of
:mod:`scaling.proxy.moe_infer` (``off`` is the training forward, for reference). A round times
every (config, tokens, path) cell once, the paths' order rotating from round to round; the first
round warms up. Reports each cell's median and its 10th-90th percentile range, each path's
median paired ratio to the first path, and the fastest path per regime.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from scaling.proxy.dispatch import INFERENCE_PATHS  # noqa: E402
from scaling.proxy.model import MoE, ProxyConfig, ProxyModel  # noqa: E402
from scaling.proxy.moe_infer import regime  # noqa: E402
from scaling.shape.hf_config import load_hf_config  # noqa: E402

DEFAULT_CONFIGS = [
    HERE / "configs" / name for name in ("olmoe-d256-l6.json", "mixtral-d384-l6.json", "qwen2moe-d256-l6.json")
]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def first_moe_layer(config_path: Path) -> MoE:
    torch.manual_seed(0)
    model = ProxyModel(ProxyConfig(load_hf_config(str(config_path)))).eval()
    return next(module for module in model.modules() if isinstance(module, MoE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--tokens", default="1,64,256,1024", help="comma-separated token counts (1: decode)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--paths", default="native,grouped,sorted,off")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    paths = args.paths.split(",")
    try:
        token_counts = [int(t) for t in args.tokens.split(",")]
    except ValueError:
        parser.error(f"--tokens must be comma-separated integers, got {args.tokens!r}")
    if any(p not in INFERENCE_PATHS or p == "auto" for p in paths) or min(token_counts) < 1 or args.rounds < 1:
        parser.error(f"paths among {INFERENCE_PATHS[1:]}, tokens and rounds >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cells = []
    for config_path in args.configs:
        layer = first_moe_layer(config_path)
        generator = torch.Generator().manual_seed(0)
        for tokens in token_counts:
            x = torch.randn(1, tokens, layer.gate_up.shape[1], generator=generator)
            cells.append({"config": config_path.stem, "tokens": tokens, "layer": layer, "x": x, "times": {}})
    for index in range(args.rounds + 1):
        for cell in cells:
            turn = index % len(paths)
            for path in paths[turn:] + paths[:turn]:
                cell["layer"].inference_path = path
                with torch.inference_mode():
                    start = time.perf_counter()
                    cell["layer"](cell["x"])
                    seconds = time.perf_counter() - start
                if index:
                    cell["times"].setdefault(path, []).append(seconds)
    rows, wins = [], {}
    for cell in cells:
        layer, times = cell["layer"], cell["times"]
        kind = regime(cell["tokens"], layer.n_routed_experts, layer.routed_top_k)
        row = {"config": cell["config"], "tokens": cell["tokens"], "regime": kind}
        for path in paths:
            row[f"{path}_ms"] = statistics.median(times[path]) * 1e3
            row[f"{path}_ms_p10_p90"] = [percentile(times[path], 0.1) * 1e3, percentile(times[path], 0.9) * 1e3]
            ratios = [other / first for other, first in zip(times[path], times[paths[0]], strict=True)]
            row[f"{path}_over_{paths[0]}"] = statistics.median(ratios)
        row["fastest"] = min(paths, key=lambda p: row[f"{p}_ms"])
        wins.setdefault(kind, []).append(row["fastest"])
        rows.append(row)
    print(
        f"{'config':<18}{'tokens':>7}  {'regime':<15}" + "".join(f"{p + ' ms':>14}{'/' + paths[0]:>10}" for p in paths)
    )
    for row in rows:
        line = f"{row['config']:<18}{row['tokens']:>7}  {row['regime']:<15}"
        line += "".join(f"{row[f'{p}_ms']:>14.3f}{row[f'{p}_over_{paths[0]}']:>10.2f}" for p in paths)
        print(line)
    host = {
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps({"fastest_by_regime": wins, **host}, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "fastest_by_regime": wins, "host": host}, indent=1))


if __name__ == "__main__":
    main()
