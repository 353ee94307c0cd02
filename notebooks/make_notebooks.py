"""Writes notebooks/01_scaling_fits.ipynb and 02_phone_planning.ipynb; `make notebooks` then executes them."""
import nbformat
from nbformat.v4 import new_code_cell as code, new_markdown_cell as md, new_notebook

nb1 = new_notebook(cells=[
md("""# Scaling fits: the proxies, the law card, the published data

The reference sweep v2 (`runs/sweeps/reference.toml`: 12 dense and MoE families at d_model 32 and 64 plus a dense ladder, 3 seeds, on the `prose-code` corpus), loaded through the pandas API; what each MoE axis does, with intervals across seeds; the planner's law card and its backtests; and the published datasets that the loader finds (the over-training runs ship with moeplan; the Chinchilla points and the routed runs need `MOEPLAN_DATA`). Losses of the proxies are in **nats per byte**; the published ones in nats per token of their own tokenizers."""),
code("""%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from importlib import resources
from scaling.laws.build_card import matched_deltas
from scaling.laws.card import load_card
from scaling.laws.datasets import available, overtraining_runs
from scaling.laws.fit import fit_law
from scaling.runs.frames import aggregate_seeds, fit_frame

store = resources.files("scaling.runs") / "reference" / "reference.sqlite"
runs = fit_frame(f"sqlite:///{store}")
runs = runs[runs["stage"] == "main"].assign(width=lambda f: f["arch.d_model"], budget=lambda f: (f["D"] / f["N"]).round())
print(f"{len(runs)} finished runs, losses in {runs['loss_unit'].iloc[0]}; corpus epochs at most {runs['epochs'].max():.3f}")
aggregate_seeds(runs)[["arch_name", "N", "N_total", "E", "k", "G", "S", "D", "lr", "loss_mean", "loss_sd", "n_seeds"]].head(12)"""),
md("## Seed noise: MoE against dense\n\nSD across seeds of the final validation loss, per shape and budget; the ratio of each MoE shape's SD to the dense SD at the same width and budget."),
code("""cells = runs[runs["width"].isin([32, 64])].groupby(["width", "budget", "E", "k", "G", "S"])["loss"].agg(["mean", "std", "count"]).reset_index()
dense_sd = cells[(cells["E"] == 1)].set_index(["width", "budget"])["std"]
cells["sd_over_dense"] = cells["std"] / dense_sd.reindex(pd.MultiIndex.from_frame(cells[["width", "budget"]])).to_numpy()
cells.pivot_table(index=["E", "k", "G", "S"], columns=["width", "budget"], values="std").round(4)"""),
code("""moe = cells[cells["E"] * cells["G"] > 1]
print(f"MoE SD / dense SD: median {moe['sd_over_dense'].median():.2f}, max {moe['sd_over_dense'].max():.2f} "
      f"(share of MoE cells within 1.5x: {(moe['sd_over_dense'] <= 1.5).mean():.0%})")"""),
md("## What each MoE axis does, at equal active parameters and tokens\n\nEach designed contrast's loss difference (nats/byte, MoE minus its baseline) with a 95% t interval across seeds, per width and budget. Negative is better."),
code("""deltas = matched_deltas(runs)
deltas.round(4)"""),
code("""largest = deltas[deltas["width"] == deltas["width"].max()]
figure, axes = plt.subplots(figsize=(8, 4.5))
for offset, (budget, rows) in zip((-0.15, 0.15), largest.groupby("tokens_per_param")):
    y = np.arange(len(rows)) + offset
    axes.errorbar(rows["delta_loss"], y, xerr=[rows["delta_loss"] - rows["lower"], rows["upper"] - rows["delta_loss"]],
                  fmt="o", capsize=3, label=f"{budget:g} tokens per active parameter")
axes.set_yticks(np.arange(len(rows)), rows["contrast"], fontsize=8)
axes.axvline(0, color="grey", lw=0.8)
axes.set(xlabel="loss difference (nats/byte), 95% interval across seeds", title=f"d_model {largest['width'].max()}: each axis against its baseline")
axes.legend(fontsize=8); figure.tight_layout()"""),
md("## Expert utilisation\n\nAt each run's final evaluation (validation windows), the mean over MoE layers: normalised load entropy (1 = uniform), max/mean load, dead-expert fraction; and how many runs collapsed."),
code("""routed = runs[runs["E"] * runs["G"] > 1]
routed.groupby(["width", "E", "k", "G", "S"])[["expert_load_entropy", "expert_load_max_over_mean", "dead_expert_fraction", "collapsed"]].mean().round(3)"""),
md("## The planner's law card\n\nA dense base law fitted on published over-trained runs gives the absolute loss; the MoE terms give the dense-equivalent size N_eq = N_active · M. Each term with its source, range, parameters (90% intervals from bootstrap replicates) and rolling-origin backtests."),
code("""card = load_card()
print(card.summary())"""),
code("""shapes = pd.DataFrame({"N": np.geomspace(1e8, 3e9, 30), "D": 1e12, "E": 1.0, "k": 1.0, "G": 1.0, "S": 0.0})
figure, axes = plt.subplots(figsize=(6.5, 4))
for label, change in (("dense", {}), ("E8", {"E": 8.0}), ("E8 G4", {"E": 8.0, "G": 4.0}), ("E8 G4 + shared", {"E": 8.0, "G": 4.0, "S": 1.0})):
    predicted = card.predict(shapes.assign(**change))
    axes.plot(shapes["N"], predicted["loss"], label=label)
    axes.fill_between(shapes["N"], predicted["loss_lower"], predicted["loss_upper"], alpha=0.15)
axes.set(xscale="log", xlabel="active parameters", ylabel=f"predicted loss ({card.unit})", title="The card at 1e12 tokens: median and 90% interval")
axes.legend(fontsize=8); figure.tight_layout()"""),
md("## Published data: the over-training runs (shipped, MIT)\n\nGadre et al. 2024's open_lm runs on C4, 11M to 6.9B parameters at 0.25 to 32 times Chinchilla tokens: the base law's data, with the law and its bootstrap band."),
code("""over = overtraining_runs()
base = card.terms["base"].forms["chinchilla"]
figure, axes = plt.subplots(figsize=(6.5, 4))
for multiplier, rows in over.groupby("multiplier"):
    axes.scatter(rows["N"], rows["loss"], s=12, label=f"{multiplier:g}x")
n = np.geomspace(over["N"].min(), over["N"].max(), 50)
for multiplier in (1.0, 32.0):
    d = 20 * multiplier * n
    draws = np.array([base.replicates[p] for p in ("E", "A", "B", "alpha", "beta")])
    curves = draws[0][:, None] + draws[1][:, None] * n ** -draws[3][:, None] + draws[2][:, None] * d ** -draws[4][:, None]
    axes.plot(n, np.median(curves, 0), color="black", lw=1)
    axes.fill_between(n, *np.quantile(curves, [0.05, 0.95], 0), color="grey", alpha=0.3)
axes.set(xscale="log", xlabel="parameters", ylabel=f"loss ({over['loss_unit'].iloc[0]})", title="Base law (lines: 1x and 32x Chinchilla tokens)")
axes.legend(fontsize=6, ncol=2, title="tokens / 20N"); figure.tight_layout()"""),
md("## Published data that moeplan may not ship\n\nThe Chinchilla points (Epoch AI's extraction) and the routed-MoE runs (Clark et al.'s design) carry no licence: the loader finds them only where `MOEPLAN_DATA` points. Without them, these cells say so and the rest of the notebook stands."),
code("""if available("chinchilla"):
    from scaling.laws.datasets import chinchilla_points
    from scaling.laws.isoflop import chinchilla_allocation
    chinchilla = chinchilla_points()
    dense_fit = fit_law(chinchilla, "chinchilla", bootstrap=50, workers=2)
    print(dense_fit.summary())
    display(chinchilla_allocation(dense_fit.params, np.geomspace(1e18, 1e24, 4)))
else:
    print("chinchilla_fig4_points.csv is not here (no licence to ship it): set MOEPLAN_DATA to see the replication")"""),
code("""if available("routed_moe"):
    from scaling.laws.build_card import expansion_transfer
    from scaling.laws.datasets import routed_moe_runs
    check = expansion_transfer(routed_moe_runs(checkpoints="all"), fit_below=1e8, predict_size=368_123_904.0)
    display(pd.Series(check).round(4))
else:
    print("routed_moe_runs.csv is not here (no licence to ship it): set MOEPLAN_DATA to see the transfer check")"""),
])

nb2 = new_notebook(cells=[
md("""# Phone planning

Device profiles per backend, the calibration on published phone measurements, plans for the iPhone 16 Pro at the MobileMoE budgets with loss intervals and `p_front`, and dense against MoE at equal INT4 memory with latency intervals."""),
code("""%matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd

from scaling.laws.datasets import available
from search.device.moe_check import moe_speedups, speedup_ladder
from search.device.profiles import get_device, list_devices
from search.plan.planner import plan
from search.plan.request import PlanRequest

pd.DataFrame([d.summary() for d in list_devices()]).drop(columns=["path"], errors="ignore")"""),
md("## The calibrated backends of the Galaxy S25\n\nEach fitted number is marked `measured` and cites the published rows it rests on; the calibration record keeps its leave-one-model-out errors."),
code("""s25 = get_device("galaxy-s25")
for backend in ("cpu", "npu"):
    profile = s25.for_backend(backend)
    print(backend, profile.record if profile.record is not None else "not calibrated")"""),
md("## Plans for the iPhone 16 Pro at the three MobileMoE budgets (INT4 weights)\n\nThe front of loss against decode latency, losses as medians with 90% intervals over the law card's samples."),
code("""fronts = {}
for budget in (0.68, 1.48, 2.75):
    document = plan(PlanRequest(device=get_device("iphone-16-pro"), max_weight_bytes=budget * 1e9, exhaustive=True, min_p_front=0.5))
    fronts[budget] = pd.DataFrame([{"name": e["arch"]["name"], "loss": e["predicted_loss"], "lo": e["predicted_loss_ci90"][0],
                                    "hi": e["predicted_loss_ci90"][1], "p_front": e["p_front"], "decode_tok_s": e["decode_tokens_per_s"],
                                    "moe": e["n_experts"] > 1} for e in document["pareto"]])
    print(f"{budget} GB: {len(fronts[budget])} robust shapes (p_front >= 0.5), {fronts[budget]['moe'].mean():.0%} MoE; loss in {document['loss_unit']}")
fronts[1.48].head(10)"""),
code("""figure, axes = plt.subplots(figsize=(7, 4.2))
for budget, front in fronts.items():
    axes.errorbar(front["decode_tok_s"], front["loss"], yerr=[front["loss"] - front["lo"], front["hi"] - front["loss"]], fmt="o", markersize=3, capsize=2, label=f"{budget} GB")
axes.set(xlabel="decode tokens/s (iPhone 16 Pro profile, predicted)", ylabel="predicted loss (median, 90% interval)", title="Robust fronts at INT4")
axes.legend(); figure.tight_layout()"""),
md("## Dense against MoE at equal INT4 memory\n\nDense time over MoE time per calibrated backend and prompt length, with 90% intervals; then the cost model's terms switched on one at a time."),
code("""speedups = moe_speedups(get_device("galaxy-s25"), prompts=(64, 256, 1024, 2048), n_samples=1000)
speedups.round(2)"""),
code("""columns = [c for c in speedups.columns if c.endswith("_speedup")]
figure, axes = plt.subplots(1, len(columns), figsize=(9, 3.6), sharey=True)
for axis, column in zip(axes, columns):
    phase = column.removesuffix("_speedup")
    for backend, rows in speedups.groupby("backend"):
        low, high = rows[f"{phase}_lo"], rows[f"{phase}_hi"]
        axis.errorbar(rows["prompt_tokens"], rows[column], yerr=[rows[column] - low, high - rows[column]], marker="o", capsize=2, label=backend)
    axis.axhline(1, color="grey", lw=0.8); axis.set(xscale="log", xlabel="prompt tokens", title=f"{phase}: dense time / MoE time")
axes[0].set_ylabel("speed-up (median, 90% interval)"); axes[-1].legend(fontsize=7); figure.tight_layout()"""),
code("""speedup_ladder(get_device("galaxy-s25").for_backend("cpu"), prompt_tokens=512)"""),
])
nbformat.write(nb1, "notebooks/01_scaling_fits.ipynb")
nbformat.write(nb2, "notebooks/02_phone_planning.ipynb")
