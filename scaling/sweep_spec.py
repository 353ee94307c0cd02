"""Sweep specs (TOML): a base shape, variations over any ArchSpec field, token budgets, training.

A spec is validated in full before anything runs; an error names the TOML key path::

    name = "smoke"
    [base]                       # ArchSpec fields
    vocab_size = 256
    d_model = 64
    n_layers = 2
    n_heads = 4
    d_ff = 128
    [[vary]]                     # groups combine as a product; within a group:
    grid = {d_model = [64, 96]}  #   grid: every combination
    [[vary]]
    list = [{n_experts = 1}, {n_experts = 4, top_k = 1, n_shared_experts = 1}]
    #   (or zip = {a = [...], b = [...]}: parallel lists)
    [tokens]                     # exactly one of: absolute, tokens_per_param, compute
    tokens_per_param = [10, 20]  #   D = m x N_active;  compute: D = C / (6 N_active)
    [train]                      # TrainConfig fields (steps come from the token budget)
    batch_size = 8
    seq_len = 64
    lr_scaling = "none"          # or "inverse_width": lr x base d_model / d_model
    [run]
    seeds = [0]
    corpus = "shakespeare"
    infer_bench = false
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from scaling import accounting
from scaling.arch import ArchError, ArchSpec, field_names
from scaling.errors import UserError
from scaling.train_config import TrainConfig

TOP_LEVEL = ("name", "description", "base", "vary", "tokens", "train", "run")
TOKEN_MODES = ("absolute", "tokens_per_param", "compute")
LR_SCALING = ("none", "inverse_width")
RUN_KEYS = ("seeds", "corpus", "infer_bench", "skip_invalid", "warmup_fraction")
TRAIN_KEYS = (*tuple(k for k in TrainConfig.__dataclass_fields__ if k not in ("steps", "warmup_steps")), "lr_scaling")


@dataclass(frozen=True)
class RunConfig:
    """One run of a sweep: shape, training configuration, budget, seed."""

    arch: ArchSpec
    train: TrainConfig
    tokens: int
    seed: int
    corpus: str
    infer_bench: bool
    budget: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> dict[str, Any]:
        return {
            "arch": self.arch.canonical(),
            "train": self.train.to_dict(),
            "tokens": self.tokens,
            "corpus": self.corpus,
            "infer_bench": self.infer_bench,
        }

    @property
    def run_id(self) -> str:
        """A stable hash of the canonical config: the same run in any sweep has one id."""
        text = json.dumps(self.canonical(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SweepSpec:
    name: str
    description: str
    runs: list[RunConfig]
    skipped: list[str]
    text: str

    @property
    def run_ids(self) -> set[str]:
        """The ids of the runs this spec produces."""
        return {run.run_id for run in self.runs}


def _fail(path: str, message: str) -> UserError:
    return UserError(f"sweep spec: {path}: {message}")


def _expand_group(group: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(group, dict) or len(group) != 1 or next(iter(group)) not in ("grid", "zip", "list"):
        raise _fail(path, "each [[vary]] entry needs exactly one of grid, zip or list")
    kind, body = next(iter(group.items()))
    allowed = set(field_names()) - {"name"}
    if kind == "list":
        if not isinstance(body, list) or not all(isinstance(x, dict) for x in body) or not body:
            raise _fail(f"{path}.list", "must be a non-empty list of tables of ArchSpec fields")
        for index, item in enumerate(body):
            for key in item:
                if key not in allowed:
                    raise _fail(f"{path}.list[{index}].{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")
        return [dict(item) for item in body]
    if not isinstance(body, dict) or not body:
        raise _fail(f"{path}.{kind}", "must be a table of field = [values]")
    for key, values in body.items():
        if key not in allowed:
            raise _fail(f"{path}.{kind}.{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")
        if not isinstance(values, list) or not values:
            raise _fail(f"{path}.{kind}.{key}", "must be a non-empty list of values")
    keys = list(body)
    if kind == "grid":
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*body.values())]
    lengths = {len(v) for v in body.values()}
    if len(lengths) != 1:
        raise _fail(f"{path}.zip", f"lists must have equal lengths, got {sorted(lengths)}")
    return [dict(zip(keys, combo, strict=True)) for combo in zip(*body.values(), strict=True)]


def parse_sweep(text: str, origin: str = "<spec>") -> SweepSpec:
    """Parse and validate a sweep spec; expand it into runs."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"sweep spec {origin} is not valid TOML: {error}") from None
    for key in document:
        if key not in TOP_LEVEL:
            raise _fail(key, f"unknown key; allowed: {', '.join(TOP_LEVEL)}")
    name = document.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _fail("name", "a sweep needs a non-empty string name")
    base = document.get("base")
    if not isinstance(base, dict):
        raise _fail("base", "a sweep needs a [base] table of ArchSpec fields")
    vary = document.get("vary", [])
    if not isinstance(vary, list):
        raise _fail("vary", "must be an array of tables ([[vary]])")
    groups = [_expand_group(group, f"vary[{index}]") for index, group in enumerate(vary)]
    tokens = document.get("tokens")
    if not isinstance(tokens, dict) or len(tokens) != 1 or next(iter(tokens)) not in TOKEN_MODES:
        raise _fail("tokens", f"needs exactly one of {', '.join(TOKEN_MODES)} = [values]")
    mode, budgets = next(iter(tokens.items()))
    if (
        not isinstance(budgets, list)
        or not budgets
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0 for b in budgets)
    ):
        raise _fail(f"tokens.{mode}", "must be a non-empty list of positive numbers")
    train_table = dict(document.get("train", {}))
    for key in train_table:
        if key not in TRAIN_KEYS:
            raise _fail(f"train.{key}", f"unknown key; allowed: {', '.join(TRAIN_KEYS)}")
    lr_scaling = train_table.pop("lr_scaling", "none")
    if lr_scaling not in LR_SCALING:
        raise _fail("train.lr_scaling", f"must be one of {', '.join(LR_SCALING)}")
    run_table = document.get("run", {})
    for key in run_table:
        if key not in RUN_KEYS:
            raise _fail(f"run.{key}", f"unknown key; allowed: {', '.join(RUN_KEYS)}")
    seeds = run_table.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise _fail("run.seeds", "must be a non-empty list of non-negative integers")
    warmup_fraction = run_table.get("warmup_fraction", 0.1)
    if not isinstance(warmup_fraction, (int, float)) or not 0 <= warmup_fraction < 1:
        raise _fail("run.warmup_fraction", "must be in [0, 1)")
    try:
        template = TrainConfig(**train_table)
    except (UserError, TypeError) as error:
        raise _fail("train", str(error)) from None
    try:
        base_spec = ArchSpec.from_dict({**base, "name": base.get("name", name)})
    except ArchError as error:
        raise _fail("base", str(error)) from None

    runs, skipped = [], []
    for combination in itertools.product(*groups) if groups else [()]:
        changes: dict[str, Any] = {}
        for part in combination:
            changes.update(part)
        label = ",".join(f"{k}={v}" for k, v in changes.items()) or "base"
        try:
            spec = base_spec.replace(**changes, name=f"{name}[{label}]")
        except ArchError as error:
            if run_table.get("skip_invalid", False):
                skipped.append(f"{label}: {error}")
                continue
            raise _fail(f"vary ({label})", f"{error}; set run.skip_invalid = true to skip such shapes") from None
        active = int(accounting.active_params(spec))
        for budget in budgets:
            if mode == "absolute":
                tokens_total = int(budget)
            elif mode == "tokens_per_param":
                tokens_total = int(budget * active)
            else:
                tokens_total = int(budget / (6 * active))
            tokens_per_step = template.batch_size * template.seq_len
            steps = max(1, round(tokens_total / tokens_per_step))
            lr = template.lr * (base_spec.d_model / spec.d_model if lr_scaling == "inverse_width" else 1.0)
            for seed in seeds:
                train = TrainConfig(
                    **{
                        **template.to_dict(),
                        "steps": steps,
                        "seed": seed,
                        "lr": lr,
                        "warmup_steps": min(steps, max(1, round(warmup_fraction * steps))),
                        "eval_interval": min(template.eval_interval, steps),
                        "checkpoint_interval": min(template.checkpoint_interval, steps)
                        if template.checkpoint_interval
                        else 0,
                    }
                )
                runs.append(
                    RunConfig(
                        arch=spec,
                        train=train,
                        tokens=steps * tokens_per_step,
                        seed=seed,
                        corpus=str(run_table.get("corpus", "shakespeare")),
                        infer_bench=bool(run_table.get("infer_bench", False)),
                        budget={mode: budget},
                    )
                )
    if not runs:
        raise _fail("vary", "the sweep expands to no valid run")
    return SweepSpec(name=name, description=str(document.get("description", "")), runs=runs, skipped=skipped, text=text)


def load_sweep(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep spec {str(path)!r} does not exist")
    return parse_sweep(path.read_text(), str(path))
