"""The Optuna samplers a plan may name: constants only, so the command line's flags can list them
without importing the planner."""

SAMPLERS = ("nsga2", "nsga2-tuned", "nsga3", "tpe", "random", "qmc")
"""Optuna samplers by name (:func:`search.plan.engine.make_sampler`; ``gp``, Optuna's GPSampler,
needs torch: the benchmark alone offers it)."""

DEFAULT_SAMPLER = "nsga2-tuned"
"""The measured best on the large space (docs/search_engines.md): highest median hypervolume at 500
and 1000 trials, narrowest spread."""
