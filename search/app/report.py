"""Human-readable tables for the terminal (rich). Data is computed elsewhere; this only draws."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from search.plan.outputs import budget_text

if TYPE_CHECKING:
    from search.plan.result import PlanResult


def human_count(value: float | None) -> str:
    """12_345_678 -> '12.35M' (None, for a value not known yet -> '-')."""
    if value is None:
        return "-"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def human_bytes(value: float) -> str:
    """Decimal units, as the CLI's GB flags are 10^9 bytes."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a table to stdout with rich."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(table)


def print_arch_table(specs: Sequence[Any], precision: str) -> None:
    """One row per shape: parameters, FLOPs and bytes."""
    from scaling.shape.accounting import summary

    rows = []
    for spec in specs:
        info = summary(spec, precision)
        moe = (
            f"E{info['n_experts']} k{info['top_k']} G{info['granularity']}"
            + (f" +{info['n_shared_experts']}s" if info["n_shared_experts"] else "")
            if spec.is_moe
            else "dense"
        )
        rows.append(
            [
                spec.name or "-",
                f"{spec.n_layers}x{spec.d_model}",
                moe,
                human_count(info["total_params"]),
                human_count(info["active_params"]),
                human_count(info["flops_per_token"]),
                human_bytes(info["weight_bytes"]),
                human_bytes(info["kv_cache_bytes_per_token"]),
            ]
        )
    print_table(
        f"Architectures ({precision} weights)",
        ["name", "layers x d", "MLP", "total", "active", "FLOPs/token", "weights", "KV/token"],
        rows,
    )


def hypervolume_text(result: PlanResult) -> str:
    """What the hypervolume is normalised to, said with it."""
    scale = (
        f"objectives scaled to [0, 1] over the {result.feasible_shapes:,} feasible shapes, reference point 1.1 per axis"
    )
    if result.engine == "exhaustive":
        return f"hypervolume {result.hypervolume:.3f} ({scale}; exhaustive, so the exact front's)"
    if result.exact_hypervolume is None:  # a large space: no exact front to compare with
        return (f"hypervolume {result.hypervolume:.3f} ({scale} the trials visited; the space cannot be enumerated, "
                "so the exact front's is unknown)")  # fmt: skip
    return f"hypervolume {result.hypervolume:.3f} ({scale}; the exact front's is {result.exact_hypervolume:.3f})"


def pareto_table(result: PlanResult) -> tuple[str, list[str], list[list[str]]]:
    """Title, columns and rows of a plan's Pareto front."""
    title = (
        f"Pareto front on {result.device} ({result.backend}), {budget_text(result)}; "
        f"{hypervolume_text(result)}; loss in {result.loss_unit} at {result.train_tokens:.2g} {result.tokens_unit}"
    )
    columns = [
        "shape",
        "total",
        "active",
        "pred. loss",
        "90% interval",
        "p_front",
        "decode tok/s (90%)",
        "prefill ms (90%)",
    ]
    columns += ["weights", "peak memory"]
    by_scheme = len(result.schemes) > 1  # a precision menu: each entry's scheme
    if by_scheme:
        columns.insert(1, "scheme")
    rows = [
        [
            entry.name,
            *([entry["scheme"]] if by_scheme else []),
            human_count(entry["total_params"]),
            human_count(entry["active_params"]),
            f"{entry['predicted_loss']:.4f}",
            "{:.3f}-{:.3f}".format(*entry["predicted_loss_ci90"]) if "predicted_loss_ci90" in entry else "-",
            f"{entry['p_front']:.2f}" if "p_front" in entry else "-",
            _latency(entry["decode_tokens_per_s"], entry.get("decode_tokens_per_s_ci90"), ".1f"),
            _latency(entry["prefill_ms"], entry.get("prefill_ms_ci90"), ".0f"),
            human_bytes(entry["weight_bytes"]),
            human_bytes(entry["peak_memory_bytes"]),
        ]
        for entry in result.pareto
    ]
    return title, columns, rows


def _latency(value: float, interval: list[float] | None, spec: str) -> str:
    """A latency with its 90% interval, or a plain prior value marked as such (no zero-width interval)."""
    if not interval:
        return f"{value:{spec}} (prior)"
    return f"{value:{spec}} ({interval[0]:{spec}}-{interval[1]:{spec}})"


def shape_label(run: dict[str, Any]) -> str:
    """``dense`` or ``E8 k1 G2 +1s``, with the width, for one stored run."""
    width = ""
    if run.get("config"):
        config = run["config"] if isinstance(run["config"], dict) else json.loads(run["config"])
        width = f"d{config['arch']['d_model']} "
    if (run.get("n_routed_experts") or run.get("n_experts") or 1) <= 1:
        return f"{width}dense"
    shared = f" +{run['n_shared_experts']}s" if run.get("n_shared_experts") else ""
    return f"{width}E{run['n_experts']} k{run['top_k']} G{run['granularity']}{shared}"


def print_run(document: dict[str, Any]) -> None:
    """``moeplan runs show``: the run's facts, its loss curve and its expert utilisation."""
    facts = [
        ["id", document["id"]],
        ["sweep / stage", f"{document['sweep']} / {document.get('stage') or 'main'}"],
        ["status", document["status"] + (f" ({document['error']})" if document.get("error") else "")],
        ["shape", shape_label(document)],
        ["parameters", f"{human_count(document['active_params'])} active of {human_count(document['total_params'])}"],
        ["seed / lr", f"{document.get('seed')} / {document.get('lr')}"],
        ["tokens / epochs", f"{human_count(document['tokens'])} / {document.get('epochs') or 0:.3f}"],
        ["final val loss (nats/byte)", _maybe(document["final_val_loss"])],
    ]
    print_table(f"Run {document['id']}", ["", ""], facts)
    print_table(
        "Loss curve (nats/byte)",
        ["step", "tokens", "train", "val", "lr"],
        [
            [p["step"], human_count(p["tokens"]), f"{p['train_loss']:.4f}", _maybe(p["val_loss"]), f"{p['lr']:.3g}"]
            for p in document["metrics"]
        ],
    )
    routing = document.get("routing") or []
    if routing:
        last = max(r["step"] for r in routing)
        final = [r for r in routing if r["step"] == last]
        n_routed_experts = len(final[0]["shares"])
        print_table(
            f"Expert utilisation at step {last}: each expert's share of tokens (uniform = {1 / n_routed_experts:.3f})",
            ["layer", *[f"e{i}" for i in range(n_routed_experts)], "entropy", "max/mean", "dead", "z-loss"],
            [
                [
                    r["layer"],
                    *[f"{share:.3f}" for share in r["shares"]],
                    f"{r['entropy']:.3f}",
                    f"{r['max_over_mean']:.2f}",
                    f"{r['dead_fraction']:.0%}",
                    f"{r['z_loss']:.2f}",
                ]
                for r in final
            ],
        )
    quantization = document.get("quantization") or []
    if quantization:
        print_table(
            "Quantised (post-training): validation loss in nats/byte",
            ["scheme", "method", "loss before", "loss after", "penalty", "packed weights"],
            [
                [
                    q["scheme"],
                    q["method"],
                    f"{q['loss_before']:.4f}",
                    f"{q['loss_after']:.4f}",
                    f"{q['loss_after'] - q['loss_before']:+.4f}",
                    human_bytes(q["packed_weight_bytes"]),
                ]
                for q in quantization
            ],
        )


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
