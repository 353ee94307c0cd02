"""Optuna over the large space: each trial one shape, evaluated as the grid's shapes are.

:func:`search_large` takes a :class:`~search.plan.request.PlanRequest` whose ``space`` is a
:class:`~search.plan.large_space.LargeSpace` and returns a :class:`LargeSearch`: the feasible
Pareto front, the trial count and the per-trial history (objectives, feasibility, the running
hypervolume can be computed from it with :func:`hypervolume_curve`). Memory and the optional
bounds are Optuna constraints (``trial.set_constraint``; feasible when every one is <= 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from search.plan.engine import make_sampler, open_storage
from search.plan.evaluate import bound_excess, evaluate, loss_samples
from search.plan.large_space import LargeSpace
from search.plan.pareto import hypervolume, pareto_mask
from search.plan.request import PlanRequest


@dataclass
class LargeSearch:
    """What a search of the large space found.

    Attributes:
        front: The feasible non-dominated trials (rows of :attr:`history`).
        n_trials: Trials run (a resumed study counts its earlier ones).
        history: One row per trial, in trial order: the choice, every evaluated column
            (objectives, memory, loss interval) and ``feasible``.
        choices: The repaired choice of each row of :attr:`history`.
        samples: The loss samples of each row, (trials, samples).
        sampler: The sampler's name.
        space_size: Combinations of the space (:meth:`LargeSpace.size`).
    """

    front: pd.DataFrame
    n_trials: int
    history: pd.DataFrame
    choices: list[dict[str, Any]]
    samples: np.ndarray
    sampler: str
    space_size: int


def evaluate_choice(request: PlanRequest, choice: dict[str, Any]) -> tuple[pd.Series, np.ndarray]:
    """One shape through the grid's evaluation: its row (objectives, memory, feasibility, loss)
    and its loss samples."""
    space: LargeSpace = request.space
    arrays = space.arrays([choice])
    precisions, schemes = space.deployments([choice])
    frame = evaluate(request, arrays, precisions, schemes)
    if "loss" in request.objectives or request.min_p_front is not None:
        samples = loss_samples(request, arrays, frame)[0]
    else:
        samples = np.empty(0, dtype=np.float32)
        frame["loss"] = frame["loss_lower"] = frame["loss_upper"] = frame["dense_equivalent_params"] = np.nan
    return frame.iloc[0], samples


def search_large(request: PlanRequest, sampler: Any = "nsga2") -> LargeSearch:
    """Run an Optuna study of ``request.trials`` trials over the (validated) request's large space.

    ``sampler``: a name of :data:`search.plan.engine.SAMPLERS`, or an Optuna sampler object."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space: LargeSpace = request.space
    study = optuna.create_study(
        directions=["minimize"] * len(request.objectives),
        sampler=make_sampler(sampler, request.seed, request.trials) if isinstance(sampler, str) else sampler,
        storage=open_storage(request.storage),
        study_name=request.study,
        load_if_exists=request.study is not None,
    )
    rows, choices, samples = [], [], []

    def objective(trial):
        choice = space.suggest(trial)
        row, draws = evaluate_choice(request, choice)
        trial.set_constraint("memory_gb_over_budget", float(row["peak_memory_bytes"] - request.budget) / 1e9)
        for name, value in bound_excess(request, row).items():
            trial.set_constraint(name, value)
        rows.append(row.drop(labels=["index"]).rename(len(rows)))
        choices.append(choice)
        samples.append(draws)
        return tuple(float(row[o]) for o in request.objectives)

    study.optimize(objective, n_trials=request.trials)
    history = pd.DataFrame(rows).reset_index(drop=True)
    history.insert(0, "trial", np.arange(len(history)))
    for key in ("feasible",):
        history[key] = history[key].astype(bool)
    return LargeSearch(
        front=front_of(history, request.objectives),
        n_trials=len(study.trials),
        history=history,
        choices=choices,
        samples=np.vstack(samples) if samples else np.empty((0, 0), np.float32),
        sampler=sampler if isinstance(sampler, str) else type(sampler).__name__,
        space_size=space.size(),
    )


def front_of(history: pd.DataFrame, objectives) -> pd.DataFrame:
    """The feasible non-dominated rows of a history (duplicates of one shape kept once)."""
    feasible = history[history["feasible"]]
    if feasible.empty:
        return feasible
    front = feasible[pareto_mask(feasible[list(objectives)].to_numpy(float))]
    return front


def hypervolume_curve(
    history: pd.DataFrame, objectives, low: np.ndarray, high: np.ndarray, checkpoints: list[int]
) -> list[float]:
    """Hypervolume (normalised as :func:`search.plan.pareto.hypervolume`) of the feasible trials
    among the first n, for each n of ``checkpoints``."""
    curve = []
    for n in checkpoints:
        first = history.iloc[:n]
        feasible = first[first["feasible"]]
        curve.append(hypervolume(feasible[list(objectives)].to_numpy(float), low, high))
    return curve
