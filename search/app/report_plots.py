"""The report's drawings besides the front: the winner's memory and latency, and the law card's fit.
The data comes from :mod:`search.app.story` and :mod:`search.app.card_curves`; this only draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATE_COLOURS = {"prior": "tab:orange", "measured": "tab:green", "spec": "tab:blue"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_winner(story: dict[str, Any], path: Path) -> Path:
    """Left: peak memory by part (GB). Right: prefill and decode ms per cost term, coloured by the
    state of the numbers each term rests on."""
    plt = _pyplot()
    figure, (memory_axes, latency_axes) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=120)
    memory = story["memory"]
    parts = [(f"weights: {k}", v) for k, v in memory["weights_by_part_bytes"].items()]
    parts += [("KV cache", memory["kv_cache_bytes"]), ("activations", memory["activation_bytes"]),
              ("runtime", memory["runtime_bytes"])]  # fmt: skip
    left = 0.0
    colours = plt.cm.tab20.colors
    for index, (label, value) in enumerate(parts):
        memory_axes.barh([0], [value / 1e9], left=left, color=colours[index % 20], label=f"{label} ({value / 1e9:.3g})")
        left += value / 1e9
    memory_axes.axvline(
        memory["usable_memory_bytes"] / 1e9, color="black", linestyle="--", label="usable on the device"
    )
    memory_axes.set(
        yticks=[], xlabel="GB (10^9 bytes)", title=f"peak memory {memory['peak_memory_bytes'] / 1e9:.3g} GB"
    )
    memory_axes.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    latency = story["latency"]
    terms = [t["term"] for t in latency["prefill"]["terms"]]
    decode = {t["term"]: t for t in latency["decode"]["terms"]}
    positions = range(len(terms))
    for offset, phase, hatch in ((-0.2, "prefill", ""), (0.2, "decode", "//")):
        values = [(latency[phase]["terms"][i]["ms"] if phase == "prefill" else decode.get(t, {"ms": 0})["ms"])
                  for i, t in enumerate(terms)]  # fmt: skip
        states = [latency["prefill"]["terms"][i]["state"] for i in positions]
        latency_axes.bar([p + offset for p in positions], values, width=0.4, hatch=hatch, edgecolor="black",
                         color=[STATE_COLOURS[s] for s in states], label=phase)  # fmt: skip
    latency_axes.set(yscale="log", ylabel="ms", xticks=list(positions))
    latency_axes.set_xticklabels(terms, rotation=40, ha="right", fontsize=7)
    calibrated = "" if latency["calibrated"] else ", uncalibrated: priors, no interval"
    latency_axes.set_title(
        f"ms per cost term: prefill of {latency['prompt_tokens']} tokens, decode per token\n"
        f"({latency['device']} {latency['backend']}{calibrated})",
        fontsize=8,
    )
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in STATE_COLOURS.values()]
    handles += [plt.Rectangle((0, 0), 1, 1, fill=False, hatch=h) for h in ("", "//")]
    latency_axes.legend(handles, [*STATE_COLOURS, "prefill", "decode"], fontsize=7)
    figure.suptitle(story["name"], fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def draw_card_fit(card: Any, path: Path) -> Path | None:
    """Each law-card term's curve with its 90% band, its data range shaded; None for a single fit."""
    from scaling.laws.card import LawCard
    from search.app.card_curves import card_curves

    if not isinstance(card, LawCard):
        return None
    curves = card_curves(card)
    plt = _pyplot()
    columns = min(3, len(curves))
    rows = -(-len(curves) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.1 * rows), dpi=120, squeeze=False)
    for axis in axes.flat[len(curves) :]:
        axis.set_visible(False)
    for axis, curve in zip(axes.flat, curves, strict=False):
        if curve["data_range"]:
            axis.axvspan(*curve["data_range"], color="tab:green", alpha=0.12, label="its data")
        axis.fill_between(curve["x"], *curve["ci90"], color="tab:blue", alpha=0.25, linewidth=0, label="90% band")
        axis.plot(curve["x"], curve["median"], color="tab:blue", marker="." if len(curve["x"]) < 20 else None,
                  label="median")  # fmt: skip
        if curve["x_log"]:
            axis.set_xscale("log")
        at = ", ".join(f"{k}={v:.2g}" for k, v in curve["at"].items())
        axis.set_title(f"{curve['term']} (at {at})", fontsize=8)
        axis.set_xlabel(curve["x_label"], fontsize=7)
        axis.set_ylabel(curve["y_label"], fontsize=7)
        axis.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    figure.suptitle(f"law card {card.name!r}: each term with its 90% band; loss in {card.unit}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
