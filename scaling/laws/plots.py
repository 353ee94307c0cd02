"""Drawing of the fit plots with matplotlib (Agg). The data comes from :mod:`scaling.laws.plot_data`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from scaling.errors import UserError
from scaling.laws import plot_data
from scaling.laws.fit import FitResult
from scaling.laws.isoflop import IsoFlopResult


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    return plt, figure, axes


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _in_group(frame: pd.DataFrame, tokens) -> pd.Series:
    return frame["D_group"].isna() if pd.isna(tokens) else frame["D_group"] == tokens


def draw_loss_vs_size(data: dict[str, pd.DataFrame], path: Path, title: str, loss: str = "loss") -> Path:
    plt, figure, axes = _figure()
    observed, fitted = data["observed"], data["fitted"]
    groups = list(fitted["D_group"].unique())
    for index, tokens in enumerate(groups):
        colour = plt.cm.viridis(index / max(1, len(groups) - 1))
        label = "fit" if pd.isna(tokens) else f"D ~ {tokens:.3g}"
        curve = fitted[_in_group(fitted, tokens)]
        axes.plot(curve["N"], curve["loss"], color=colour, label=label)
        if "lower" in curve:  # bootstrap replicates: their 95% band
            axes.fill_between(curve["N"], curve["lower"], curve["upper"], color=colour, alpha=0.2, linewidth=0)
        points = observed[_in_group(observed, tokens)]
        axes.scatter(points["N"], points["loss"], color=colour, s=14)
    band = " (bands: bootstrap 95%)" if "lower" in fitted else ""
    axes.set(xscale="log", xlabel="N (parameters)", ylabel=loss, title=title + band)
    axes.title.set_fontsize(9)
    axes.legend(fontsize=7)
    return _save(plt, figure, path)


def _error_note(axes, data: pd.DataFrame, label: str) -> None:
    """The plot's error, printed in its corner."""
    errors = plot_data.relative_errors(data)
    note = f"{label}: mean |rel err| {errors['mean_abs_rel_error']:.2%}, max {errors['max_abs_rel_error']:.2%}"
    axes.text(0.02, 0.97, note, transform=axes.transAxes, va="top", fontsize=8)


def draw_parity(data: pd.DataFrame, path: Path, title: str, loss: str = "loss") -> Path:
    plt, figure, axes = _figure()
    axes.scatter(data["actual"], data["predicted"], s=12)
    _error_note(axes, data, "all points")
    low, high = data[["actual", "predicted"]].min().min(), data[["actual", "predicted"]].max().max()
    axes.plot([low, high], [low, high], color="grey", linestyle="--", label="y = x")
    axes.set(xlabel=f"actual {loss}", ylabel=f"predicted {loss}", title=title)
    axes.title.set_fontsize(9)
    axes.legend(loc="lower right")
    return _save(plt, figure, path)


def draw_residuals(data: pd.DataFrame, path: Path, title: str) -> Path:
    plt, figure, axes = _figure()
    axes.scatter(data["N"], data["log_residual"], s=12)
    axes.axhline(0, color="grey", linestyle="--")
    axes.set(xscale="log", xlabel="N (parameters)", ylabel="log(pred) - log(actual)", title=title)
    axes.title.set_fontsize(9)
    return _save(plt, figure, path)


def draw_extrapolation(data: pd.DataFrame, path: Path, title: str, loss: str = "loss") -> Path:
    plt, figure, axes = _figure()
    fitted, held = data[~data["held_out"]], data[data["held_out"]]
    axes.scatter(fitted["actual"], fitted["predicted"], s=12, label="fitted on")
    axes.scatter(
        held["actual"],
        held["predicted"],
        s=30,
        marker="*",
        color="crimson",
        label="held out (largest N)",
    )
    low, high = data[["actual", "predicted"]].min().min(), data[["actual", "predicted"]].max().max()
    axes.plot([low, high], [low, high], color="grey", linestyle="--")
    _error_note(axes, held, "held out")
    axes.set(xlabel=f"actual {loss}", ylabel=f"predicted {loss}", title=title)
    axes.title.set_fontsize(9)
    axes.legend(loc="lower right")
    return _save(plt, figure, path)


def draw_isoflop(data: dict[str, pd.DataFrame], path: Path, title: str, loss: str = "loss") -> Path:
    plt, figure, axes = _figure()
    budgets = sorted(data["optima"]["C"])
    for index, compute in enumerate(budgets):
        colour = plt.cm.plasma(index / max(1, len(budgets) - 1))
        curve = data["fitted"][data["fitted"]["C"] == compute]
        axes.plot(curve["N"], curve["loss"], color=colour, label=f"C={compute:.2g}")
    axes.scatter(data["observed"]["N"], data["observed"]["loss"], s=8, color="grey", alpha=0.6)
    axes.scatter(
        data["optima"]["N_opt"],
        data["optima"]["loss_opt"],
        marker="x",
        color="black",
        s=40,
        label="optimum",
    )
    axes.set(xscale="log", xlabel="N (parameters)", ylabel=loss, title=title)
    axes.legend(fontsize=6)
    return _save(plt, figure, path)


def write_fit_plots(
    frame: pd.DataFrame, fit: FitResult, folder: str | Path, isoflop: IsoFlopResult | None = None
) -> list[Path]:
    """Write every plot for a fit into ``folder``; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    about = plot_data.describe_data(frame, fit)
    unit = fit.extra.get("loss_unit")
    loss = f"loss ({unit})" if unit else "loss (unit not given by the data)"
    written = [
        draw_loss_vs_size(
            plot_data.loss_vs_size(frame, fit), folder / "loss_vs_n.png", f"{fit.law}: loss vs N\n{about}", loss
        ),
        draw_parity(
            plot_data.parity(frame, fit), folder / "parity.png", f"{fit.law}: predicted vs actual\n{about}", loss
        ),
        draw_residuals(plot_data.residuals(frame, fit), folder / "residuals.png", f"{fit.law}: residuals\n{about}"),
    ]
    if frame["N"].nunique() >= 3:
        try:
            data = plot_data.extrapolation(frame, fit.law, fit.delta)
            written.append(
                draw_extrapolation(
                    data,
                    folder / "extrapolation.png",
                    f"{fit.law}: leave-largest-out (fit without the largest N)\n{about}",
                    loss,
                )
            )
        except UserError:  # too few points to refit without the largest models
            pass
    if isoflop is not None:  # only when the isoFLOP analysis was asked for
        written.append(
            draw_isoflop(
                plot_data.isoflop_curves(frame, isoflop), folder / "isoflop.png", f"isoFLOP curves\n{about}", loss
            )
        )
    return written
