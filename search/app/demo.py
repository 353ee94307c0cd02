"""``moeplan demo``: the main job on the embedded defaults, end to end in a few minutes.

1. The architecture table of the built-in shapes (exact parameters, FLOPs and INT4 bytes).
2. A real sweep: the smoke spec, trained on Shakespeare into ``runs/demo/demo.sqlite``.
3. A scaling-law fit with bootstrap intervals and leave-largest-out, on the reference sweep's
   exported results when they exist, else on the published Chinchilla points, with plots.
4. A plan: the exact Pareto front of loss against decode latency on the iPhone 16 Pro profile
   within a 2 GB memory budget, with a plot and one --arch file per proposed shape.
5. Dense against MoE at equal INT4 weight memory on the iPhone 16 Pro profile.

Everything lands in ``runs/demo/``: ``summary.md`` and the PNG plots.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from scaling.shape import accounting
from scaling.shape.presets import get_preset, preset_names
from search.app.report import print_arch_table, print_table

REPORT = Path("runs") / "demo"  # under the working folder, created when missing
REFERENCE = Path(str(resources.files("scaling.runs") / "reference" / "reference_runs.csv"))
PLAN_MEMORY_GB = 2.0  # a phone app's share of DRAM for the model: weights, KV cache, activations


def _step(message: str) -> None:
    print(f"\n== {message}", file=sys.stderr)


def run_demo(args: argparse.Namespace) -> None:
    REPORT.mkdir(parents=True, exist_ok=True)
    lines = ["# moeplan demo report", ""]

    _step("1/5 architecture accounting (INT4 weights, fp16 group scales)")
    print_arch_table([get_preset(name) for name in preset_names()], "int4")

    _step("2/5 a real sweep: the built-in smoke spec (runs/sweeps/smoke.toml) on Shakespeare")
    from scaling.runs.spec import load_sweep
    from scaling.runs.store import RunStore
    from scaling.runs.sweep import prune_sweep, run_sweep

    store_url = f"sqlite:///{REPORT / 'demo.sqlite'}"
    spec = load_sweep("smoke")
    if (REPORT / "demo.sqlite").exists():  # the demo's own scratch store: drop runs of older specs
        prune_sweep(spec, store_url)
    summary = run_sweep(spec, store_url, quiet=not sys.stderr.isatty())
    current = spec.run_ids
    runs = [run for run in RunStore(store_url).runs("smoke") if run["id"] in current]
    lines += [
        "## Smoke sweep",
        "",
        f"{summary['finished']} runs finished in {summary['wall_s']:.0f} s.",
        "",
        "| run | total params | active params | tokens | final val loss (nats/byte) |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['arch_name']} | {run['total_params']:,} | {run['active_params']:,} | "
            f"{run['tokens']:,} | {run['final_val_loss']:.4f} |"
        )

    _step("3/5 scaling-law fit with bootstrap intervals")
    import pandas as pd

    from scaling.errors import UserError
    from scaling.laws.datasets import chinchilla_points
    from scaling.laws.fit import fit_law
    from scaling.laws.plots import write_fit_plots

    frame = None
    if REFERENCE.exists():
        frame, law, origin = pd.read_csv(REFERENCE), "ondevice", f"the reference sweep ({REFERENCE})"
        frame = frame[frame["status"] == "finished"] if "status" in frame.columns else frame
        if len(frame) < 20:  # a sweep still in progress: not enough points for this law yet
            frame = None
    if frame is None:
        try:
            frame, law, origin = (
                chinchilla_points(),
                "chinchilla",
                "the published Chinchilla points (Hoffmann et al. 2022)",
            )
        except UserError as error:
            print(f"note: no fit data ({error}); skipping the fit", file=sys.stderr)
    if frame is not None:
        fit = fit_law(frame, law, bootstrap=200)
        print(fit.summary())
        plots = write_fit_plots(frame, fit, REPORT / "fit")
        lines += ["", f"## Scaling-law fit: `{law}` on {origin}", "", "```", fit.summary(), "```", ""]
        lines += [f"![{p.stem}](fit/{p.name})" for p in plots]

    _step(f"4/5 plan: the Pareto front on iphone-16-pro within {PLAN_MEMORY_GB:g} GB (INT4)")
    lines += _plan_section()

    _step("5/5 dense against MoE at equal INT4 weight memory on iphone-16-pro")
    from search.device.cost import predict
    from search.device.profiles import get_device

    device = get_device("iphone-16-pro")
    rows, predictions = [], {}
    for name in ("phone-dense-1.5b", "phone-moe-a0.3b"):
        spec = get_preset(name)
        prediction = predict(spec, device, "int4", 512, 1024)
        predictions[name] = prediction
        rows.append(
            [
                name,
                f"{accounting.total_params(spec) / 1e9:.2f}B",
                f"{accounting.active_params(spec) / 1e9:.2f}B",
                f"{prediction['weight_bytes'] / 1e9:.2f} GB",
                f"{prediction['prefill_ms']:.0f}",
                f"{prediction['decode_tokens_per_s']:.1f}",
                "yes" if prediction["fits_in_memory"] else "no",
            ]
        )
    columns = ["shape", "total", "active", "INT4 weights", "prefill 512 ms", "decode tok/s", "fits"]
    print_table("iPhone 16 Pro, INT4 weights, 512-token prompt, 1024 context", columns, rows)
    dense, moe = predictions["phone-dense-1.5b"], predictions["phone-moe-a0.3b"]
    decode_speedup = moe["decode_tokens_per_s"] / dense["decode_tokens_per_s"]
    prefill_speedup = dense["prefill_ms"] / moe["prefill_ms"]
    figure = _draw_speedups(rows, REPORT / "dense_vs_moe.png")
    lines += [
        "",
        "## Dense against MoE at equal INT4 memory (iphone-16-pro profile)",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [
        "",
        f"Predicted MoE speed-up: decode {decode_speedup:.2f}x, prefill {prefill_speedup:.2f}x "
        "(MobileMoE reports 2.2-3.4x decode and 1.8-3.8x prefill on phones).",
        "",
        f"![dense vs MoE]({figure.name})",
    ]
    (REPORT / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"\nreport: {REPORT / 'summary.md'} (plots beside it)", file=sys.stderr)


def _plan_section() -> list[str]:
    """Plan on the phone at the demo's budget (every shape of the default space), with a Pareto plot."""
    from search.app.report import pareto_table
    from search.device.profiles import get_device
    from search.plan.outputs import write_outputs
    from search.plan.planner import plan
    from search.plan.request import PlanRequest

    document = plan(
        PlanRequest(device=get_device("iphone-16-pro"), memory_budget_bytes=PLAN_MEMORY_GB * 1e9, exhaustive=True)
    )
    write_outputs(document, REPORT / "plan")
    title, columns, rows = pareto_table(document)
    print_table(title, columns, rows)
    return [
        "",
        f"## Plan: {title}",
        "",
        f"{document['feasible_shapes']:,} of {document['space_size']:,} shapes fit; loss predicted by the "
        f"`{document['fit_law']}` law (search/default_fit.json) at {document['train_tokens']:.0e} training tokens. "
        "Each proposed shape has an --arch file and a Hugging Face config.json in `plan/arch/`.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        "![Pareto front](plan/pareto.png)",
    ]


def _draw_speedups(rows: list[list[str]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row[0] for row in rows]
    prefill = [float(row[4]) for row in rows]
    decode = [float(row[5]) for row in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 3.6), dpi=120)
    left.bar(names, prefill, color=["tab:grey", "tab:blue"])
    left.set(title="prefill 512 tokens (ms, lower is better)")
    right.bar(names, decode, color=["tab:grey", "tab:blue"])
    right.set(title="decode (tokens/s, higher is better)")
    for axes in (left, right):
        axes.tick_params(axis="x", labelsize=8)
    figure.suptitle("iPhone 16 Pro profile, equal INT4 weight memory")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
