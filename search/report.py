"""Human-readable tables for the terminal (rich). Data is computed elsewhere; this only draws."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any


def human_count(value: float) -> str:
    """12_345_678 -> '12.35M'."""
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
    from scaling.accounting import summary

    rows = []
    for spec in specs:
        info = summary(spec, precision)
        moe = (
            f"{info['n_experts']}e top{info['top_k']} G{info['granularity']}"
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


PARETO_COLUMNS = ["shape", "total", "active", "pred. loss", "decode tok/s", "prefill ms", "weights", "peak memory"]


def pareto_table(document: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """Title, columns and rows of a plan document's Pareto front."""
    title = (
        f"Pareto front on {document['device']} within {human_bytes(document['memory_budget_bytes'])} "
        f"(hypervolume {document['hypervolume']:.3f} of exact {document['exact_hypervolume']:.3f})"
    )
    rows = [
        [
            entry["arch"]["name"],
            human_count(entry["total_params"]),
            human_count(entry["active_params"]),
            f"{entry['predicted_loss']:.4f}",
            f"{entry['decode_tokens_per_s']:.1f}",
            f"{entry['prefill_ms']:.0f}",
            human_bytes(entry["weight_bytes"]),
            human_bytes(entry["peak_memory_bytes"]),
        ]
        for entry in document["pareto"]
    ]
    return title, PARETO_COLUMNS, rows
