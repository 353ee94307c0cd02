"""A sweep spec's main tables, each checked on its own; :mod:`scaling.runs.spec` expands them into runs.

An error names the TOML key path (``sweep spec: train.lr_scaling: must be one of ...``); the
tables are checked in the order a spec is read, so a spec with several mistakes reports the first.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import tomllib

from scaling.checks import LIMITS
from scaling.errors import UserError
from scaling.shape.arch import ArchError, ArchSpec, field_names
from scaling.train.config import TrainConfig

TOP_LEVEL = ("name", "description", "base", "vary", "tokens", "train", "run", "lr_search", "quantize")
TOKEN_MODES = ("absolute", "tokens_per_param", "compute")
ENTRY_OVERRIDES = (*TOKEN_MODES, "seeds")  # what a [[vary]] list entry may set besides ArchSpec fields
LR_SCALING = ("none", "inverse_width")
RUN_KEYS = ("seeds", "corpus", "infer_bench", "skip_invalid", "warmup_fraction")
TRAIN_KEYS = (*tuple(k for k in TrainConfig.__dataclass_fields__ if k not in ("steps", "warmup_steps")), "lr_scaling")


def spec_error(path: str, message: str) -> UserError:
    return UserError(f"sweep spec: {path}: {message}")


def _expand_group(group: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(group, dict) or len(group) != 1 or next(iter(group)) not in ("grid", "zip", "list"):
        raise spec_error(path, "each [[vary]] entry needs exactly one of grid, zip or list")
    kind, body = next(iter(group.items()))
    allowed = set(field_names()) - {"name"}
    if kind == "list":
        if not isinstance(body, list) or not all(isinstance(x, dict) for x in body) or not body:
            raise spec_error(f"{path}.list", "must be a non-empty list of tables of ArchSpec fields")
        for index, item in enumerate(body):
            for key in item:
                if key not in allowed | set(ENTRY_OVERRIDES):
                    raise spec_error(
                        f"{path}.list[{index}].{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}"
                    )
            overrides = [key for key in item if key in TOKEN_MODES]
            if len(overrides) > 1:
                raise spec_error(f"{path}.list[{index}]", f"give at most one token budget, got {overrides}")
            for key in overrides:
                _check_budgets(item[key], f"{path}.list[{index}].{key}")
            if "seeds" in item:
                check_seeds(item["seeds"], f"{path}.list[{index}].seeds")
        return [dict(item) for item in body]
    if not isinstance(body, dict) or not body:
        raise spec_error(f"{path}.{kind}", "must be a table of field = [values]")
    for key, values in body.items():
        if key not in allowed:
            raise spec_error(f"{path}.{kind}.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")
        if not isinstance(values, list) or not values:
            raise spec_error(f"{path}.{kind}.{key}", "must be a non-empty list of values")
    keys = list(body)
    if kind == "grid":
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*body.values())]
    lengths = {len(v) for v in body.values()}
    if len(lengths) != 1:
        raise spec_error(f"{path}.zip", f"lists must have equal lengths, got {sorted(lengths)}")
    return [dict(zip(keys, combo, strict=True)) for combo in zip(*body.values(), strict=True)]


def _check_budgets(budgets: Any, path: str) -> None:
    if (
        not isinstance(budgets, list)
        or not budgets
        or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0 for b in budgets
        )
    ):
        raise spec_error(path, "must be a non-empty list of positive numbers")


def check_run_tokens(tokens: int, path: str) -> None:
    """A run's token budget within :data:`scaling.checks.LIMITS` (a store holds it as a 64-bit integer)."""
    if tokens > LIMITS["tokens"]:
        raise spec_error(path, f"a run of {tokens:.3g} tokens is over the limit of {LIMITS['tokens']:.0e} tokens")


def check_seeds(seeds: Any, path: str) -> None:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= LIMITS["seed"] for x in seeds)
    ):
        raise spec_error(path, f"must be a non-empty list of integers from 0 to {LIMITS['seed']}")


@dataclass
class SpecTables:
    """A spec's main tables, each checked: what its runs are expanded from."""

    name: str
    base: ArchSpec
    groups: list[list[dict[str, Any]]]  # one per [[vary]] entry: the changes it offers
    token_mode: str  # the [tokens] mode
    budgets: list[float]  # the [tokens] budgets
    template: TrainConfig  # [train], steps and seed still to set
    lr_scaling: str
    run: dict[str, Any]  # the [run] table
    seeds: list[int]
    warmup_fraction: float


def load_document(text: str, origin: str) -> dict[str, Any]:
    """The TOML document, with only known top-level keys."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"sweep spec {origin} is not valid TOML: {error}") from None
    for key in document:
        if key not in TOP_LEVEL:
            raise spec_error(key, f"unknown key; allowed: {', '.join(TOP_LEVEL)}")
    return document


def parse_tables(document: dict[str, Any]) -> SpecTables:
    """Every table but [quantize] and [lr_search], checked in the order a user reads the errors."""
    name = document.get("name")
    if not isinstance(name, str) or not name.strip():
        raise spec_error("name", "a sweep needs a non-empty string name")
    base = document.get("base")
    if not isinstance(base, dict):
        raise spec_error("base", "a sweep needs a [base] table of ArchSpec fields")
    groups = _parse_vary(document.get("vary", []))
    token_mode, budgets = _parse_tokens(document.get("tokens"))
    train_table, lr_scaling = _parse_train(document.get("train", {}))
    run_table, seeds, warmup_fraction = _parse_run(document.get("run", {}))
    try:
        template = TrainConfig(**train_table)
    except (UserError, TypeError) as error:
        raise spec_error("train", str(error)) from None
    try:
        base_spec = ArchSpec.from_dict({**base, "name": base.get("name", name)})
    except ArchError as error:
        raise spec_error("base", str(error)) from None
    return SpecTables(
        name, base_spec, groups, token_mode, budgets, template, lr_scaling, run_table, seeds, warmup_fraction
    )


def _parse_vary(vary: Any) -> list[list[dict[str, Any]]]:
    if not isinstance(vary, list):
        raise spec_error("vary", "must be an array of tables ([[vary]])")
    return [_expand_group(group, f"vary[{index}]") for index, group in enumerate(vary)]


def _parse_tokens(tokens: Any) -> tuple[str, list[float]]:
    """The [tokens] table: its one mode and its budgets."""
    if not isinstance(tokens, dict) or len(tokens) != 1 or next(iter(tokens)) not in TOKEN_MODES:
        raise spec_error("tokens", f"needs exactly one of {', '.join(TOKEN_MODES)} = [values]")
    mode, budgets = next(iter(tokens.items()))
    _check_budgets(budgets, f"tokens.{mode}")
    return mode, budgets


def _parse_train(table: Any) -> tuple[dict[str, Any], str]:
    """The [train] table's TrainConfig fields, and its lr_scaling."""
    table = dict(table)
    for key in table:
        if key not in TRAIN_KEYS:
            raise spec_error(f"train.{key}", f"unknown key; allowed: {', '.join(TRAIN_KEYS)}")
    lr_scaling = table.pop("lr_scaling", "none")
    if lr_scaling not in LR_SCALING:
        raise spec_error("train.lr_scaling", f"must be one of {', '.join(LR_SCALING)}")
    return table, lr_scaling


def _parse_run(table: Any) -> tuple[Any, list[int], float]:
    """The [run] table, its seeds and its warm-up fraction."""
    for key in table:
        if key not in RUN_KEYS:
            raise spec_error(f"run.{key}", f"unknown key; allowed: {', '.join(RUN_KEYS)}")
    seeds = table.get("seeds", [0])
    check_seeds(seeds, "run.seeds")
    warmup_fraction = table.get("warmup_fraction", 0.1)
    if not isinstance(warmup_fraction, (int, float)) or not 0 <= warmup_fraction < 1:
        raise spec_error("run.warmup_fraction", "must be in [0, 1)")
    return table, seeds, warmup_fraction
