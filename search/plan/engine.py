"""The sampling engine: an Optuna multi-objective study over the space's choices.

The request's sampler (:func:`search.plan.request.resolved_sampler`): NSGA-II (tuned) for the
cheap analytic objectives; in measured mode (each trial a benchmark) a multivariate TPE, which
uses few trials well. Constraints go through ``trial.set_constraint``:
a trial is feasible when every constraint is at most zero.
"""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd

from scaling.errors import UserError
from search.plan.evaluate import bound_excess
from search.plan.pareto import pareto_mask
from search.plan.request import PlanRequest, resolved_sampler
from search.plan.samplers import SAMPLERS
from search.plan.space import SearchSpace


def optuna_front(
    request: PlanRequest, space: SearchSpace, choices: list[dict[str, Any]], frame: pd.DataFrame
) -> tuple[pd.DataFrame, int]:
    """Run the study; returns its feasible Pareto front (rows of ``frame``) and the trial count.

    In measured mode the measured latencies replace the predicted ones in ``frame``.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lookup = {tuple(c.values()): i for i, c in enumerate(choices)}
    keys = list(choices[0].keys())
    storage = open_storage(request.storage)
    # nsga2-tuned by default, measured on this space: a small population (16, so 30 generations in 500
    # trials) with a 0.25 mutation rate reaches 98.2-98.5% of the exact hypervolume over seeds (the
    # defaults 97-98%); a multivariate TPE in measured mode, which uses few trials well
    sampler = make_sampler(resolved_sampler(request), request.seed, request.trials)
    study = optuna.create_study(
        directions=["minimize"] * len(request.objectives),
        sampler=sampler,
        storage=storage,
        study_name=request.study,
        load_if_exists=request.study is not None,
    )
    worst = frame[list(request.objectives)].max().to_numpy(float) * 10

    def objective(trial: optuna.Trial):
        choice = {key: trial.suggest_categorical(key, space.values(key)) for key in keys}
        if choice["n_experts"] == 1:
            choice.update(top_k=1, granularity=1, n_shared_experts=0)
        index = lookup.get(tuple(choice[k] for k in keys))
        if index is None:  # an impossible combination (top-k above E): infeasible by construction
            trial.set_constraint("valid_shape", 1.0)
            return tuple(worst)
        if request.latency_oracle is not None:
            measured = request.latency_oracle(space.spec(choices[index]))
            frame.loc[index, "decode_ms"] = measured["decode_ms"]
            frame.loc[index, "prefill_ms"] = measured["prefill_ms"]
            frame.loc[index, "decode_tokens_per_s"] = 1e3 / measured["decode_ms"]
        row = frame.iloc[index]
        trial.set_user_attr("index", int(index))
        trial.set_constraint("memory_gb_over_budget", float(row["peak_memory_bytes"] - request.budget) / 1e9)
        for name, value in bound_excess(request, row).items():
            trial.set_constraint(name, value)
        return tuple(float(row[o]) for o in request.objectives)

    study.optimize(objective, n_trials=request.trials)
    indices = sorted({t.user_attrs["index"] for t in study.best_trials if "index" in t.user_attrs})
    front = frame.iloc[indices]
    front = front[front["feasible"]]
    values = front[list(request.objectives)].to_numpy(float)
    return front[pareto_mask(values)] if len(front) else front, len(study.trials)


def engine_label(sampler: str) -> str:
    """A grid plan's ``engine`` for a sampler: ``optuna-nsga2`` (either NSGA-II setting) and
    ``optuna-tpe`` as documented, else ``optuna-`` and the sampler's name (the document's
    ``sampler`` names it exactly)."""
    return "optuna-nsga2" if sampler in ("nsga2", "nsga2-tuned") else f"optuna-{sampler}"


def make_sampler(name: str, seed: int, trials: int):
    """An Optuna sampler by name (:data:`SAMPLERS`); constraints read from ``trial.set_constraint``.

    ``nsga2-tuned`` is the grid's setting (population 16, mutation 0.25); ``tpe`` is the
    multivariate TPE; ``random`` and ``qmc`` (Sobol) are the baselines. Optuna 5 reads the
    constraints a trial sets with ``set_constraint`` itself (no ``constraints_func``)."""
    import optuna

    samplers = optuna.samplers
    factories = {
        "nsga2": lambda: samplers.NSGAIISampler(seed=seed),
        "nsga2-tuned": lambda: samplers.NSGAIISampler(seed=seed, population_size=16, mutation_prob=0.25),
        "nsga3": lambda: samplers.NSGAIIISampler(seed=seed),
        "tpe": lambda: samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, trials)),
        "random": lambda: samplers.RandomSampler(seed=seed),
        "qmc": lambda: samplers.QMCSampler(seed=seed, qmc_type="sobol", scramble=True, warn_independent_sampling=False),
    }
    if name in factories:
        with warnings.catch_warnings():  # NSGA-III, QMC and multivariate TPE are "experimental": said in docs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return factories[name]()
    raise UserError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")


def open_storage(url: str | None):
    """Optuna storage: an RDB URL, a JournalStorage file (``*.log``/``*.jsonl``), or in memory."""
    import optuna

    if url is None:
        return None
    if url.endswith((".log", ".jsonl")) and "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    try:
        return optuna.storages.RDBStorage(url if "://" in url else f"sqlite:///{url}")
    except Exception as error:  # optuna and SQLAlchemy raise many types for a bad URL
        raise UserError(f"cannot open Optuna storage {url!r}: {' '.join(str(error).split())[:200]}") from None
