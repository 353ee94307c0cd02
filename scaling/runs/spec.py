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

import tomllib

from scaling.checks import LIMITS
from scaling.errors import UserError
from scaling.shape import accounting
from scaling.shape.arch import ArchError, ArchSpec, field_names
from scaling.shape.scheme import METHODS, Scheme, load_scheme
from scaling.train.config import TrainConfig

TOP_LEVEL = ("name", "description", "base", "vary", "tokens", "train", "run", "lr_search", "quantize")
QUANTIZE_KEYS = ("schemes", "methods")
LR_SEARCH_KEYS = ("grid", "tokens_per_param", "absolute", "seeds")
FAMILY_FIELDS = ("n_experts", "granularity", "top_k", "n_shared_experts")
STAGES = ("main", "lr_search")
TOKEN_MODES = ("absolute", "tokens_per_param", "compute")
ENTRY_OVERRIDES = (*TOKEN_MODES, "seeds")  # what a [[vary]] list entry may set besides ArchSpec fields
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
                if key not in allowed | set(ENTRY_OVERRIDES):
                    raise _fail(f"{path}.list[{index}].{key}", f"unknown field; allowed: {', '.join(sorted(allowed))}")
            overrides = [key for key in item if key in TOKEN_MODES]
            if len(overrides) > 1:
                raise _fail(f"{path}.list[{index}]", f"give at most one token budget, got {overrides}")
            for key in overrides:
                _check_budgets(item[key], f"{path}.list[{index}].{key}")
            if "seeds" in item:
                _check_seeds(item["seeds"], f"{path}.list[{index}].seeds")
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


def _check_budgets(budgets: Any, path: str) -> None:
    if (
        not isinstance(budgets, list)
        or not budgets
        or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0 for b in budgets
        )
    ):
        raise _fail(path, "must be a non-empty list of positive numbers")


def _check_run_tokens(tokens: int, path: str) -> None:
    """A run's token budget within :data:`scaling.checks.LIMITS` (a store holds it as a 64-bit integer)."""
    if tokens > LIMITS["tokens"]:
        raise _fail(path, f"a run of {tokens:.3g} tokens is over the limit of {LIMITS['tokens']:.0e} tokens")


def _check_seeds(seeds: Any, path: str) -> None:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= LIMITS["seed"] for x in seeds)
    ):
        raise _fail(path, f"must be a non-empty list of integers from 0 to {LIMITS['seed']}")


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
    default_mode, default_budgets = next(iter(tokens.items()))
    _check_budgets(default_budgets, f"tokens.{default_mode}")
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
    _check_seeds(seeds, "run.seeds")
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
        # a list entry may carry its own token budget (tokens_per_param = [...]) and seeds,
        # overriding [tokens] and [run] seeds for its runs
        mode, budgets = default_mode, default_budgets
        for key in TOKEN_MODES:
            if key in changes:
                mode, budgets = key, changes.pop(key)
        entry_seeds = changes.pop("seeds", seeds)
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
            _check_run_tokens(tokens_total, f"tokens.{mode}" if mode == default_mode else f"vary ({label}).{mode}")
            tokens_per_step = template.batch_size * template.seq_len
            steps = max(1, round(tokens_total / tokens_per_step))
            lr = template.lr * (base_spec.d_model / spec.d_model if lr_scaling == "inverse_width" else 1.0)
            for seed in entry_seeds:
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
    spec = SweepSpec(name=name, description=str(document.get("description", "")), runs=runs, skipped=skipped, text=text)
    if "quantize" in document:
        base_dir = None if origin.startswith("<") else Path(origin).parent
        spec.quantize = _quantize_pairs(document["quantize"], spec.runs, base_dir)
    if "lr_search" in document:
        _plan_lr_search(spec, document["lr_search"], lr_scaling, warmup_fraction)
    return spec


def _quantize_pairs(table: Any, runs: list[RunConfig], base_dir: Path | None) -> list[tuple[Scheme, str]]:
    """The ``[quantize]`` table: every scheme (checked against every run's shape) by every method."""
    if not isinstance(table, dict):
        raise _fail("quantize", "must be a table with schemes and methods")
    for key in table:
        if key not in QUANTIZE_KEYS:
            raise _fail(f"quantize.{key}", f"unknown key; allowed: {', '.join(QUANTIZE_KEYS)}")
    names = table.get("schemes")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _fail("quantize.schemes", "must be a non-empty list of scheme names or files")
    methods = table.get("methods", ["rtn"])
    if not isinstance(methods, list) or not methods or not all(m in METHODS for m in methods):
        raise _fail("quantize.methods", f"must be a non-empty list of {', '.join(METHODS)}")
    schemes = []
    for index, name in enumerate(names):
        try:
            scheme = load_scheme(name, base_dir)
            for arch in {run.arch for run in runs}:
                scheme.check(arch)
        except UserError as error:
            raise _fail(f"quantize.schemes[{index}]", str(error)) from None
        schemes.append(scheme)
    return [(scheme, method) for scheme in schemes for method in dict.fromkeys(methods)]


def _plan_lr_search(spec: SweepSpec, table: Any, lr_scaling: str, warmup_fraction: float) -> None:
    """Turn ``spec`` into a two-stage sweep: tuning runs now, main runs once resolved."""
    if not isinstance(table, dict):
        raise _fail("lr_search", "must be a table")
    for key in table:
        if key not in LR_SEARCH_KEYS:
            raise _fail(f"lr_search.{key}", f"unknown key; allowed: {', '.join(LR_SEARCH_KEYS)}")
    grid = table.get("grid")
    if (
        not isinstance(grid, list)
        or not grid
        or not all(isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and g > 0 for g in grid)
    ):
        raise _fail("lr_search.grid", "must be a non-empty list of positive learning rates")
    budgets = [key for key in ("tokens_per_param", "absolute") if key in table]
    if len(budgets) != 1:
        raise _fail("lr_search", "needs exactly one of tokens_per_param or absolute (the tuning runs' budget)")
    budget = table[budgets[0]]
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise _fail(f"lr_search.{budgets[0]}", "must be a positive number")
    seeds = table.get("seeds", [0])
    _check_seeds(seeds, "lr_search.seeds")
    smallest: dict[tuple[int, ...], RunConfig] = {}
    for run in spec.runs:
        current = smallest.get(run.family)
        if current is None or run.arch.d_model < current.arch.d_model:
            smallest[run.family] = run
    stage = []
    for family, run in smallest.items():
        active = int(accounting.active_params(run.arch))
        tokens_total = int(budget * active) if budgets[0] == "tokens_per_param" else int(budget)
        _check_run_tokens(tokens_total, f"lr_search.{budgets[0]}")
        tokens_per_step = run.train.batch_size * run.train.seq_len
        steps = max(1, round(tokens_total / tokens_per_step))
        for lr in grid:
            for seed in seeds:
                train = TrainConfig(
                    **{
                        **run.train.to_dict(),
                        "steps": steps,
                        "seed": seed,
                        "lr": float(lr),
                        "warmup_steps": min(steps, max(1, round(warmup_fraction * steps))),
                        "eval_interval": min(run.train.eval_interval, steps),
                        "checkpoint_interval": min(run.train.checkpoint_interval, steps)
                        if run.train.checkpoint_interval
                        else 0,
                    }
                )
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
