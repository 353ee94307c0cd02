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
    #   (or zip = {a = [...], b = [...]}: parallel lists); a list entry may also give its own
    #   token budget (e.g. tokens_per_param = [20, 50]) and seeds, replacing [tokens] and
    #   [run] seeds for its runs
    [tokens]                     # exactly one of: absolute, tokens_per_param, compute
    tokens_per_param = [10, 20]  #   D = m x N_active;  compute: D = C / (6 N_active)
    [train]                      # TrainConfig fields (steps come from the token budget)
    batch_size = 8
    seq_len = 64
    lr_scaling = "none"          # or "inverse_width": lr x base d_model / d_model
    [run]
    seeds = [0]                  # every run once per seed
    corpus = "shakespeare"
    infer_bench = false
    [lr_search]                  # optional: tune the learning rate per MoE family first
    grid = [1e-3, 3e-3, 1e-2]
    tokens_per_param = 20        #   (or absolute = [tokens]) the budget of the tuning runs
    seeds = [0]
    [quantize]                   # optional: quantise every finished main run (after training)
    schemes = ["int8", "int4-g32"]  # built-in scheme names, or scheme files beside the spec
    methods = ["rtn", "gptq"]    #   (default ["rtn"]); results go to the store's quantization table

With ``[lr_search]``, each family (the runs sharing n_experts, granularity, top_k and
n_shared_experts) is first trained at its smallest d_model with every learning rate of the
grid; the learning rate with the lowest mean final validation loss over the seeds (a failed
run counts as infinitely bad) is then used for every run of that family, scaled by
``lr_scaling`` relative to that smallest width. The tuning runs are runs of the sweep like any
other (stage ``lr_search``): stored, resumable and claimed once.

The main tables are checked in :mod:`scaling.runs.spec_tables`; this module expands them into
runs and adds the ``[quantize]`` and ``[lr_search]`` stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from scaling.errors import UserError
from scaling.runs.spec_tables import (
    TOKEN_MODES,
    SpecTables,
    check_run_tokens,
    check_seeds,
    load_document,
    parse_tables,
    spec_error,
)
from scaling.shape import accounting
from scaling.shape.arch import ArchError, ArchSpec
from scaling.shape.scheme import METHODS, Scheme, load_scheme
from scaling.train.config import TrainConfig

QUANTIZE_KEYS = ("schemes", "methods")
LR_SEARCH_KEYS = ("grid", "tokens_per_param", "absolute", "seeds")
FAMILY_FIELDS = ("n_experts", "granularity", "top_k", "n_shared_experts")
STAGES = ("main", "lr_search")


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
    stage: str = "main"

    def canonical(self) -> dict[str, Any]:
        document = {
            "arch": self.arch.canonical(),
            "train": self.train.to_dict(),
            "tokens": self.tokens,
            "corpus": self.corpus,
            "infer_bench": self.infer_bench,
        }
        if self.stage != "main":  # a tuning run and a main run with equal settings stay apart
            document["stage"] = self.stage
        return document

    @property
    def family(self) -> tuple[int, ...]:
        """The MoE family whose learning rate an ``[lr_search]`` tunes: (E, G, top-k, shared)."""
        return family_of(self.arch)

    @property
    def run_id(self) -> str:
        """A stable hash of the canonical config: the same run in any sweep has one id."""
        text = json.dumps(self.canonical(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def family_of(arch: ArchSpec) -> tuple[int, ...]:
    return tuple(getattr(arch, name) for name in FAMILY_FIELDS)


@dataclass
class SweepSpec:
    """A parsed sweep.

    Without ``[lr_search]``, :attr:`runs` holds every run. With it, :attr:`lr_stage` holds the
    tuning runs and :attr:`runs` stays empty until :meth:`resolve` is given the chosen
    learning rate of each family; :attr:`planned_runs` counts the main runs either way.
    """

    name: str
    description: str
    runs: list[RunConfig]
    skipped: list[str]
    text: str
    lr_stage: list[RunConfig] = field(default_factory=list)
    planned: list[RunConfig] = field(default_factory=list)
    lr_reference_width: dict[tuple[int, ...], int] = field(default_factory=dict)
    lr_scaling: str = "none"
    quantize: list[tuple[Scheme, str]] = field(default_factory=list)  # (scheme, method) pairs

    @property
    def run_ids(self) -> set[str]:
        """The ids of the runs this spec produces (so far: tuning runs, and main runs once resolved)."""
        return {run.run_id for run in (*self.lr_stage, *self.runs)}

    @property
    def planned_runs(self) -> int:
        return len(self.planned) if self.lr_stage else len(self.runs)

    def resolve(self, learning_rates: dict[tuple[int, ...], float]) -> list[RunConfig]:
        """Fix every main run's learning rate from its family's tuned one; returns the runs."""
        resolved = []
        for run in self.planned:
            lr = learning_rates[run.family]
            if self.lr_scaling == "inverse_width":
                lr *= self.lr_reference_width[run.family] / run.arch.d_model
            resolved.append(replace_train(run, lr=lr))
        self.runs = resolved
        return resolved


def replace_train(run: RunConfig, **changes: Any) -> RunConfig:
    """A copy of ``run`` with some training settings changed."""
    return dataclasses.replace(run, train=TrainConfig(**{**run.train.to_dict(), **changes}))


def parse_sweep(text: str, origin: str = "<spec>") -> SweepSpec:
    """Parse and validate a sweep spec; expand it into runs."""
    document = load_document(text, origin)
    tables = parse_tables(document)
    runs, skipped = _expand_runs(tables)
    if not runs:
        raise spec_error("vary", "the sweep expands to no valid run")
    spec = SweepSpec(
        name=tables.name, description=str(document.get("description", "")), runs=runs, skipped=skipped, text=text
    )
    if "quantize" in document:
        base_dir = None if origin.startswith("<") else Path(origin).parent
        spec.quantize = _quantize_pairs(document["quantize"], spec.runs, base_dir)
    if "lr_search" in document:
        _plan_lr_search(spec, document["lr_search"], tables.lr_scaling, tables.warmup_fraction)
    return spec


def _expand_runs(tables: SpecTables) -> tuple[list[RunConfig], list[str]]:
    """Every run of the [[vary]] product, each budget and seed; and the shapes skipped as invalid."""
    runs, skipped = [], []
    for combination in itertools.product(*tables.groups) if tables.groups else [()]:
        changes: dict[str, Any] = {}
        for part in combination:
            changes.update(part)
        # a list entry may carry its own token budget (tokens_per_param = [...]) and seeds,
        # overriding [tokens] and [run] seeds for its runs
        mode, budgets = tables.token_mode, tables.budgets
        for key in TOKEN_MODES:
            if key in changes:
                mode, budgets = key, changes.pop(key)
        entry_seeds = changes.pop("seeds", tables.seeds)
        label = ",".join(f"{k}={v}" for k, v in changes.items()) or "base"
        try:
            spec = tables.base.replace(**changes, name=f"{tables.name}[{label}]")
        except ArchError as error:
            if tables.run.get("skip_invalid", False):
                skipped.append(f"{label}: {error}")
                continue
            raise spec_error(f"vary ({label})", f"{error}; set run.skip_invalid = true to skip such shapes") from None
        for budget in budgets:
            runs += _budget_runs(tables, spec, mode, budget, label, entry_seeds)
    return runs, skipped


def _budget_runs(
    tables: SpecTables, spec: ArchSpec, mode: str, budget: float, label: str, seeds: list[int]
) -> list[RunConfig]:
    """One shape's runs at one token budget, one per seed."""
    active = int(accounting.active_params(spec))
    if mode == "absolute":
        tokens_total = int(budget)
    elif mode == "tokens_per_param":
        tokens_total = int(budget * active)
    else:
        tokens_total = int(budget / (6 * active))
    check_run_tokens(tokens_total, f"tokens.{mode}" if mode == tables.token_mode else f"vary ({label}).{mode}")
    template = tables.template
    tokens_per_step = template.batch_size * template.seq_len
    steps = max(1, round(tokens_total / tokens_per_step))
    lr = template.lr * (tables.base.d_model / spec.d_model if tables.lr_scaling == "inverse_width" else 1.0)
    return [
        RunConfig(
            arch=spec,
            train=_run_train(template, steps, seed, lr, tables.warmup_fraction),
            tokens=steps * tokens_per_step,
            seed=seed,
            corpus=str(tables.run.get("corpus", "shakespeare")),
            infer_bench=bool(tables.run.get("infer_bench", False)),
            budget={mode: budget},
        )
        for seed in seeds
    ]


def _run_train(template: TrainConfig, steps: int, seed: int, lr: float, warmup_fraction: float) -> TrainConfig:
    """``template`` for one run of ``steps`` steps: its seed, learning rate, warm-up and intervals."""
    return TrainConfig(
        **{
            **template.to_dict(),
            "steps": steps,
            "seed": seed,
            "lr": lr,
            "warmup_steps": min(steps, max(1, round(warmup_fraction * steps))),
            "eval_interval": min(template.eval_interval, steps),
            "checkpoint_interval": min(template.checkpoint_interval, steps) if template.checkpoint_interval else 0,
        }
    )


def _quantize_pairs(table: Any, runs: list[RunConfig], base_dir: Path | None) -> list[tuple[Scheme, str]]:
    """The ``[quantize]`` table: every scheme (checked against every run's shape) by every method."""
    if not isinstance(table, dict):
        raise spec_error("quantize", "must be a table with schemes and methods")
    for key in table:
        if key not in QUANTIZE_KEYS:
            raise spec_error(f"quantize.{key}", f"unknown key; allowed: {', '.join(QUANTIZE_KEYS)}")
    names = table.get("schemes")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise spec_error("quantize.schemes", "must be a non-empty list of scheme names or files")
    methods = table.get("methods", ["rtn"])
    if not isinstance(methods, list) or not methods or not all(m in METHODS for m in methods):
        raise spec_error("quantize.methods", f"must be a non-empty list of {', '.join(METHODS)}")
    schemes = []
    for index, name in enumerate(names):
        try:
            scheme = load_scheme(name, base_dir)
            for arch in {run.arch for run in runs}:
                scheme.check(arch)
        except UserError as error:
            raise spec_error(f"quantize.schemes[{index}]", str(error)) from None
        schemes.append(scheme)
    return [(scheme, method) for scheme in schemes for method in dict.fromkeys(methods)]


def _plan_lr_search(spec: SweepSpec, table: Any, lr_scaling: str, warmup_fraction: float) -> None:
    """Turn ``spec`` into a two-stage sweep: tuning runs now, main runs once resolved."""
    if not isinstance(table, dict):
        raise spec_error("lr_search", "must be a table")
    for key in table:
        if key not in LR_SEARCH_KEYS:
            raise spec_error(f"lr_search.{key}", f"unknown key; allowed: {', '.join(LR_SEARCH_KEYS)}")
    grid = table.get("grid")
    if (
        not isinstance(grid, list)
        or not grid
        or not all(isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and g > 0 for g in grid)
    ):
        raise spec_error("lr_search.grid", "must be a non-empty list of positive learning rates")
    budgets = [key for key in ("tokens_per_param", "absolute") if key in table]
    if len(budgets) != 1:
        raise spec_error("lr_search", "needs exactly one of tokens_per_param or absolute (the tuning runs' budget)")
    budget = table[budgets[0]]
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise spec_error(f"lr_search.{budgets[0]}", "must be a positive number")
    seeds = table.get("seeds", [0])
    check_seeds(seeds, "lr_search.seeds")
    smallest: dict[tuple[int, ...], RunConfig] = {}
    for run in spec.runs:
        current = smallest.get(run.family)
        if current is None or run.arch.d_model < current.arch.d_model:
            smallest[run.family] = run
    stage = []
    for family, run in smallest.items():
        active = int(accounting.active_params(run.arch))
        tokens_total = int(budget * active) if budgets[0] == "tokens_per_param" else int(budget)
        check_run_tokens(tokens_total, f"lr_search.{budgets[0]}")
        tokens_per_step = run.train.batch_size * run.train.seq_len
        steps = max(1, round(tokens_total / tokens_per_step))
        for lr in grid:
            for seed in seeds:
                train = _run_train(run.train, steps, seed, float(lr), warmup_fraction)
                stage.append(
                    dataclasses.replace(
                        run,
                        train=train,
                        tokens=steps * tokens_per_step,
                        seed=seed,
                        budget={f"lr_search.{budgets[0]}": budget},
                        stage="lr_search",
                    )
                )
        spec.lr_reference_width[family] = run.arch.d_model
    spec.lr_stage, spec.planned, spec.runs, spec.lr_scaling = stage, spec.runs, [], lr_scaling


SPECS = Path(str(resources.files("scaling.runs") / "specs"))  # the built-in specs (runs/sweeps in a checkout)


def builtin_specs() -> list[str]:
    return sorted(path.stem for path in SPECS.glob("*.toml"))


def load_sweep(path: str | Path) -> SweepSpec:
    """A spec file, or a built-in spec by name (``smoke``, ``reference``, ``gpu_ladder``)."""
    path = Path(path)
    if not path.exists() and path.suffix == "" and str(path) in builtin_specs():
        path = SPECS / f"{path}.toml"
    if path.is_dir():
        raise UserError(f"sweep spec {str(path)!r} is a folder; give a .toml file")
    if not path.is_file():
        raise UserError(
            f"sweep spec {str(path)!r} does not exist; give a .toml file or a built-in spec "
            f"({', '.join(builtin_specs())})"
        )
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"sweep spec {str(path)!r} is not a text (TOML) file") from None
    return parse_sweep(text, str(path))
