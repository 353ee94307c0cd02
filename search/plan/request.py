"""What a planner is asked: :class:`PlanRequest`, checked before any work starts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scaling.checks import LIMITS, check_number, check_tokens
from scaling.errors import UserError
from scaling.laws.card import LawCard, load_card
from scaling.shape.scheme import METHODS
from search.device.profiles import DeviceProfile
from search.plan.loss_model import FitLossModel, LossModel, describe
from search.plan.samplers import DEFAULT_SAMPLER, SAMPLERS
from search.plan.space import SearchSpace

OBJECTIVES = ("loss", "decode_ms", "prefill_ms", "active_flops")
LOSS_COLUMNS = {"N", "N_total", "D", "G", "S", "E", "k"}

LatencyOracle = Callable[[Any], dict[str, float]]
"""Measured mode: an ArchSpec in, ``{"decode_ms": ..., "prefill_ms": ...}`` out."""

ENGINES = ("auto", "exhaustive", "optuna")
ENUMERABLE_SHAPES = 200_000
"""Spaces up to this many shapes are scored whole (vectorised, about a second per 10^5 shapes);
beyond it the sampler searches them."""

FIELD_LABELS = {"memory_budget_bytes": "memory_gb", "max_weight_bytes": "max_weight_gb", "space": "schemes",
                "latency_oracle": "measure"}  # fmt: skip
"""A field's plain name where no face translates it (the Python API): its unit's, as the faces take it."""


class FieldError(UserError):
    """A user error about request fields. The message names each field as ``{field}`` (a
    :class:`PlanRequest` field name); each face renders it in its own spelling
    (:meth:`render`): ``--memory-gb`` on the command line, ``memory_gb`` over HTTP."""

    def __init__(self, template: str, *fields: str) -> None:
        self.template, self.fields = template, fields
        super().__init__(self.render(lambda name: FIELD_LABELS.get(name, name)))

    @property
    def field(self) -> str:
        """The first field named: the one to fix."""
        return self.fields[0]

    def render(self, spell: Callable[[str], str | None]) -> str:
        """The message with each ``{field}`` spelled by ``spell`` (a face's name for it)."""
        text = self.template
        for name in self.fields:
            text = text.replace("{" + name + "}", spell(name) or FIELD_LABELS.get(name, name))
        return text


def choose_engine(request: PlanRequest, space_size: int) -> str:
    """``exhaustive`` (the exact front) or ``optuna``, from the request and its space's size.

    The exact front is the answer wherever it can be had: every objective analytic (no
    ``latency_oracle``) and the space enumerable (at most :data:`ENUMERABLE_SHAPES`). Optuna runs
    for measured latency, for larger spaces, and where the caller asks for it (``engine="optuna"``,
    an Optuna ``storage``/``study`` to resume, or a ``sampler``). ``exhaustive=True`` forces the exact front.
    """
    if request.exhaustive or request.engine == "exhaustive":
        return "exhaustive"
    if request.latency_oracle is not None or request.engine == "optuna":
        return "optuna"
    if request.storage is not None or request.study is not None or request.sampler is not None:
        return "optuna"
    return "exhaustive" if space_size <= ENUMERABLE_SHAPES else "optuna"


@dataclass
class PlanRequest:
    """A planning problem.

    Args:
        device: The device profile whose cost model prices each shape.
        memory_budget_bytes: Bound on peak memory (default: the device's usable DRAM).
        objectives: 2 or 3 of :data:`OBJECTIVES`.
        loss_model: The loss law: a law card (default: the built-in ``default`` card) or a
            single fit (:class:`search.plan.loss_model.FitLossModel`).
        samples: Parameter samples of the loss model, for intervals and ``p_front``.
        min_p_front: Keep only shapes non-dominated in at least this share of samples.
        max_unvalidated_share: Keep only shapes whose predicted advantage over the best dense shape
            comes from unvalidated terms in at most this share (an entry's ``evidence``).
        max_extrapolation: Warn when a term of the loss model reaches this far past its data.
        trials: Optuna trials (read only when Optuna runs: :func:`choose_engine`).
        train_tokens: Planned training tokens (the law's D).
        prompt_tokens: Prefill length.
        context_tokens: KV cache length at decode.
        space: The shapes a planner may choose.
        storage: Optuna storage URL (or a journal file).
        study: Optuna study name (resumed when it exists).
        seed: Sampler seed.
        exhaustive: Enumerate the whole space (the same as ``engine="exhaustive"``).
        engine: ``auto`` (the default: :func:`choose_engine`), ``exhaustive`` or ``optuna``.
        latency_oracle: Measured mode: measures a shape's latency (see :data:`LatencyOracle`).
        max_decode_ms: Bound on decode latency per token.
        max_active_params: Bound on active parameters.
        max_weight_bytes: Bound on weight bytes alone.
        backend: The device's backend (cpu, gpu, npu) that prices the shapes; ``None``: the
            profile's own (its recommended one unless it was resolved for another).
        quant_method: How quantised deployments are made (``rtn`` or ``gptq``): the penalty
            term's method factor.
        sampler: The Optuna sampler (:data:`SAMPLERS`) where Optuna runs; naming one runs Optuna.
            ``None``: :data:`DEFAULT_SAMPLER`, or ``tpe`` in measured mode (few, costly trials):
            :func:`resolved_sampler`.
    """

    device: DeviceProfile
    memory_budget_bytes: float | None = None
    objectives: tuple[str, ...] = ("loss", "decode_ms")
    loss_model: LossModel | None = None
    samples: int = 200
    min_p_front: float | None = None
    max_unvalidated_share: float | None = None
    max_extrapolation: float = 100.0
    trials: int = 500
    train_tokens: float = 1e12
    prompt_tokens: int = 512
    context_tokens: int = 2048
    space: SearchSpace = field(default_factory=SearchSpace)
    storage: str | None = None
    study: str | None = None
    seed: int = 0
    exhaustive: bool = False
    engine: str = "auto"
    latency_oracle: LatencyOracle | None = None
    max_decode_ms: float | None = None
    max_active_params: float | None = None
    max_weight_bytes: float | None = None
    backend: str | None = None
    quant_method: str = "rtn"
    sampler: str | None = None

    def validated(self) -> PlanRequest:
        """A checked copy, with the default fit filled in (the request itself is left as given)."""
        if self.memory_budget_bytes is not None:
            check_number(self.memory_budget_bytes / 1e9, "memory_gb", above=0)
        check_number(self.trials, "trials", integer=True, minimum=1)
        check_number(self.samples, "samples", integer=True, minimum=1)
        check_number(self.seed, "seed", integer=True, minimum=0)
        check_number(self.train_tokens, "train_tokens", above=0, maximum=LIMITS["tokens"])
        check_number(self.prompt_tokens, "prompt_tokens", integer=True, minimum=1)
        check_number(self.context_tokens, "context_tokens", integer=True, minimum=1)
        check_tokens(self.prompt_tokens, self.context_tokens)
        check_number(self.max_decode_ms, "max_decode_ms", above=0, allow_none=True)
        check_number(self.max_active_params, "max_active_params", above=0, allow_none=True)
        if self.max_weight_bytes is not None:
            check_number(self.max_weight_bytes / 1e9, "max_weight_gb", above=0, maximum=LIMITS["memory_gb"])
        check_number(self.min_p_front, "min_p_front", minimum=0, maximum=1, allow_none=True)
        check_number(self.max_unvalidated_share, "max_unvalidated_share", minimum=0, maximum=1, allow_none=True)
        check_number(self.max_extrapolation, "max_extrapolation", minimum=1)
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown:
            raise UserError(f"unknown objective(s) {unknown}; choose 2 or 3 of {', '.join(OBJECTIVES)}")
        if not 2 <= len(self.objectives) <= 3 or len(set(self.objectives)) != len(self.objectives):
            raise UserError(f"choose 2 or 3 distinct objectives of {', '.join(OBJECTIVES)}")
        if self.engine not in ENGINES:
            raise FieldError(f"{{engine}} {self.engine!r} is not one of {', '.join(ENGINES)}", "engine")
        if self.exhaustive and self.engine == "optuna":
            raise FieldError("{exhaustive} and {engine} optuna do not combine: give one", "exhaustive", "engine")
        if self.latency_oracle is not None and (self.exhaustive or self.engine == "exhaustive"):
            raise FieldError(
                "{latency_oracle} and {exhaustive} do not combine: measuring every shape is what the sampler avoids",
                "latency_oracle",
                "exhaustive",
            )
        self._check_engine_fields()
        if self.backend is not None:
            self.device.for_backend(self.backend)  # an unknown backend is refused before any work
        if self.quant_method not in METHODS:
            raise UserError(f"unknown quantisation method {self.quant_method!r}; known: {', '.join(METHODS)}")
        model = self.loss_model if self.loss_model is not None else load_card()
        menu = self.space.scheme_menu
        if menu and "loss" in self.objectives:
            quantised = [name for name, scheme in menu.items() if scheme.quantised_parts()]
            if quantised and not (isinstance(model, LawCard) and model.penalty is not None):
                what = "{space} " + ",".join(menu)
                if isinstance(model, LawCard):
                    try:
                        model.require_penalty(what, "a scheme's loss")
                    except UserError as error:
                        raise FieldError(str(error), "space", "loss_model") from None
                raise FieldError(f"{what}: a single fit has no quantisation penalty; plan schemes with a law card "
                                 "that has one ({loss_model})", "space", "loss_model")  # fmt: skip
        if isinstance(model, FitLossModel) and "loss" in self.objectives:
            missing = set(model.fit.law_object.columns) - LOSS_COLUMNS
            if missing:
                raise UserError(
                    f"fit law {model.fit.law!r} needs column(s) {sorted(missing)} that a planned shape does not "
                    f"have; use a fit of chinchilla, kaplan_n, clark2022, krajewski2024, joint_moe or ondevice"
                )
        return dataclasses.replace(self, loss_model=model)

    def _check_engine_fields(self) -> None:
        """The sampler, and what the large space (which cannot be enumerated) refuses."""
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise FieldError(f"{{sampler}} {self.sampler!r} is not one of {', '.join(SAMPLERS)}", "sampler")
        if self.sampler is not None and (self.exhaustive or self.engine == "exhaustive"):
            raise FieldError("{sampler} and {exhaustive} do not combine: the exact front samples nothing",
                             "sampler", "exhaustive")  # fmt: skip
        if getattr(self.space, "kind", "grid") != "large":
            return
        if self.exhaustive or self.engine == "exhaustive":
            given = ["exhaustive"] if self.exhaustive else []
            said = "{exhaustive}" if self.exhaustive else "{engine} exhaustive"
            raise FieldError(f"{said}: the large space has {self.space.size():.3g} combinations and cannot be "
                             "enumerated; leave {engine} auto (or optuna)", *given, "engine")  # fmt: skip
        if self.latency_oracle is not None:
            raise FieldError("{latency_oracle} is offered on a grid space only (each measured shape is cached "
                             "and reused); drop it, or give a grid space", "latency_oracle")  # fmt: skip

    def echo(self) -> dict[str, Any]:
        """The request as every plan document repeats it (grid or large space): device, budget,
        objectives, the loss model, tokens and the bounds that were set."""
        bounds = ("max_weight_bytes", "max_decode_ms", "max_active_params")
        return {
            "device": self.device.name,
            "backend": self.device.for_backend(self.backend).backend,
            "memory_budget_bytes": int(self.budget),
            "objectives": list(self.objectives),
            **describe(self.loss_model),
            "train_tokens": self.train_tokens,
            "quant_method": self.quant_method,
            "prompt_tokens": self.prompt_tokens,
            "context_tokens": self.context_tokens,
            **{bound: getattr(self, bound) for bound in bounds if getattr(self, bound) is not None},
        }

    @property
    def budget(self) -> float:
        return self.memory_budget_bytes if self.memory_budget_bytes is not None else self.device.usable_bytes


def resolved_sampler(request: PlanRequest) -> str:
    """The sampler Optuna runs for ``request``: its own, else ``tpe`` in measured mode, else
    :data:`DEFAULT_SAMPLER`."""
    if request.sampler is not None:
        return request.sampler
    return "tpe" if request.latency_oracle is not None else DEFAULT_SAMPLER
