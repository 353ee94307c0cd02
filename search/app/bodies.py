"""The HTTP service's request and response bodies, and their translation into the Python API.

Numbers are checked by :func:`scaling.checks.check_number`, the one checker the command line
and the Python API also use, so a value refused by one face is refused by all three. A body
that passes here is also checked by the Python API it feeds (a plan request is validated in
full before the service answers 202), so a job never fails later on what its body said.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from scaling.checks import LIMITS, check_number, check_tokens
from scaling.errors import UserError
from search.device.profiles import PROFILE_NAME

MAX_TRIALS = 5000  # the service's own caps on the work one request may queue
MAX_BOOTSTRAP = 2000
MAX_FIT_ROWS = 100_000
MAX_SAMPLES = 1000
MAX_LARGE_TRIALS = 2000  # a large-space trial evaluates its shape (tens of ms): a few minutes of a core
MAX_GRID_SHAPES = 200_000  # a body's grid space: at most what the exact front scores whole
SPACE_OWN_FIELDS = {"schemes": "schemes", "precision": "precision"}  # the body's own fields say these

Precision = Literal["fp32", "bf16", "fp16", "int8", "int4"]
Backend = Literal["cpu", "gpu", "npu"]
DeviceName = Field(..., pattern=PROFILE_NAME, description="a device profile's name (GET /v1/devices); never a path")


class ArchSource(BaseModel):
    """Exactly one of ``preset``, ``arch`` (moeplan fields) or ``hf_config`` (a config.json object)."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: true is not 1, "2" is not 2
    preset: str | None = None
    arch: dict[str, Any] | None = None
    hf_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [name for name in ("preset", "arch", "hf_config") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of preset, arch or hf_config (got {given or 'none'})")
        return self

    def spec(self):
        if self.preset is not None:
            from scaling.shape.presets import get_preset

            return get_preset(self.preset)
        if self.arch is not None:
            from scaling.shape.arch import ArchSpec

            return ArchSpec.from_dict(self.arch)
        from scaling.shape.hf_config import from_hf_config

        return from_hf_config(self.hf_config)


class ArchRequest(ArchSource):
    precision: Precision = "bf16"


class PredictRequest(ArchSource):
    device: str = DeviceName
    backend: Backend | None = None
    precision: Precision = "int4"
    prompt_tokens: int = 512
    context_tokens: int | None = Field(None, description="tokens in the KV cache at decode (default: the prompt)")

    @field_validator("prompt_tokens", "context_tokens")
    @classmethod
    def _tokens(cls, value, info):
        return check_number(value, info.field_name, integer=True, minimum=1, allow_none=True)

    @model_validator(mode="after")
    def _context_holds_prompt(self):
        check_tokens(self.prompt_tokens, self.context_tokens)
        return self


class FitBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: true is not 1, "2" is not 2
    data: list[dict[str, Any]] = Field(..., min_length=1, max_length=MAX_FIT_ROWS, description="canonical columns")
    law: str = Field("chinchilla", description="a law name, or auto")
    bootstrap: int = Field(0, description=f"bootstrap replicates, 0 to {MAX_BOOTSTRAP}")
    delta: float = Field(1e-3, description="Huber threshold on log residuals")
    seed: int = 0

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap(cls, value):
        return check_number(value, "bootstrap", integer=True, minimum=0, maximum=MAX_BOOTSTRAP)

    @field_validator("delta")
    @classmethod
    def _delta(cls, value):
        return check_number(value, "delta", above=0)

    @field_validator("seed")
    @classmethod
    def _seed(cls, value):
        return check_number(value, "seed", integer=True, minimum=0)

    def frame(self):
        """The data as a DataFrame, checked as the law (or every candidate of ``auto``) needs it."""
        import pandas as pd

        from scaling.laws.fit import check_fit_data

        frame = pd.DataFrame(self.data)
        check_fit_data(frame, self.law)
        return frame


class PlanBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: true is not 1, "2" is not 2
    device: str = DeviceName
    backend: Backend | None = None
    memory_gb: float | None = Field(None, description="bound on peak memory in 10^9 bytes (default: usable DRAM)")
    precision: Precision = "int4"
    trials: int = Field(500, description=f"Optuna trials, 1 to {MAX_TRIALS}, where Optuna runs (engine)")
    objectives: list[str] = Field(default_factory=lambda: ["loss", "decode_ms"], min_length=2, max_length=3)
    exhaustive: bool = False
    engine: Literal["auto", "exhaustive", "optuna"] = Field(
        "auto", description="auto: the exact front where the space can be enumerated, else Optuna (trials)"
    )
    fit: dict[str, Any] | None = Field(None, description="a fit from POST /v1/fits or moeplan fit --out")
    law_card: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a built-in card's name")
    samples: int = Field(200, description=f"loss-law samples, 1 to {MAX_SAMPLES}")
    min_p_front: float | None = None
    max_unvalidated_share: float | None = None
    seed: int = 0
    max_weight_gb: float | None = None
    prompt_tokens: int = 512
    context_tokens: int = 2048
    schemes: list[str | dict[str, Any]] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="precision schemes to search: built-in names or inline scheme tables (no server files)",
    )
    quant_method: Literal["rtn", "gptq"] = "rtn"
    train_tokens: float = Field(1e12, gt=0, description="planned training tokens (the law's D)")
    max_decode_ms: float | None = Field(None, gt=0, description="bound on decode latency per token, ms")
    max_active_params: float | None = Field(None, gt=0, description="bound on active parameters")
    max_extrapolation: float = Field(100.0, ge=1, description="warn when a law term reaches this far past its data")
    sampler: str | None = Field(
        None, max_length=32, description="the Optuna sampler (naming one runs Optuna); default nsga2-tuned"
    )
    space: dict[str, Any] | None = Field(
        None,
        description='the search space, as a space file\'s [space] table; kind "large" selects the large space '
        f"(searched by Optuna, trials); a grid space has at most {MAX_GRID_SHAPES:,} combinations",
    )

    @field_validator("space")
    @classmethod
    def _space(cls, value):
        if value is None:
            return value
        for key, field_name in SPACE_OWN_FIELDS.items():
            if key in value:
                raise UserError(f"space.{key}: give it as the body's {field_name!r}, not inside space")
        _parse_space(value)  # refused here, a 422 naming the key, as a space file's would be
        return value

    @field_validator("schemes")
    @classmethod
    def _built_in_or_inline(cls, value):
        from scaling.shape.scheme import BUILTIN_SCHEMES

        for index, entry in enumerate(value or []):
            if isinstance(entry, str) and entry not in BUILTIN_SCHEMES:
                raise UserError(f"schemes[{index}]: unknown built-in scheme {entry!r}; give a name or a table")
        return value

    @field_validator("memory_gb", "max_weight_gb")
    @classmethod
    def _budget(cls, value, info):
        # checked in GB, as given: in bytes a finite 1e308 GB would be quoted back as inf
        return check_number(value, info.field_name, above=0, maximum=LIMITS["memory_gb"], allow_none=True)

    @field_validator("trials")
    @classmethod
    def _trials(cls, value):
        return check_number(value, "trials", integer=True, minimum=1, maximum=MAX_TRIALS)

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, value):
        from search.plan.request import OBJECTIVES

        unknown = [o for o in value if o not in OBJECTIVES]
        if unknown or len(set(value)) != len(value):
            problem = f"unknown {unknown}" if unknown else f"repeated in {value}"
            raise UserError(f"objectives: {problem}; choose 2 or 3 distinct objectives of {', '.join(OBJECTIVES)}")
        return value

    @field_validator("samples")
    @classmethod
    def _samples(cls, value):
        return check_number(value, "samples", integer=True, minimum=1, maximum=MAX_SAMPLES)

    def request(self):
        """The :class:`search.plan.request.PlanRequest`, validated as the command line's is."""
        from search.device.profiles import get_device
        from search.plan.request import FieldError, PlanRequest
        from search.plan.space import SearchSpace

        space = _parse_space(self.space) if self.space is not None else SearchSpace()
        if getattr(space, "kind", "grid") == "large":
            if self.trials > MAX_LARGE_TRIALS:
                raise FieldError(f"{{trials}}: at most {MAX_LARGE_TRIALS} on the large space (each trial evaluates "
                                 f"its shape), got {self.trials}", "trials")  # fmt: skip
            if self.schemes:
                raise UserError('schemes: the large space (space kind "large") picks a format per part from its '
                                "bits and group_size; drop schemes")  # fmt: skip
        else:
            space.precision = (self.precision,)
            if self.schemes:
                space.schemes = tuple(self.schemes)
            space = space.validated()
        return PlanRequest(
            device=get_device(self.device, allow_path=False),
            backend=self.backend,
            memory_budget_bytes=None if self.memory_gb is None else self.memory_gb * 1e9,
            objectives=tuple(self.objectives),
            trials=self.trials,
            exhaustive=self.exhaustive,
            engine=self.engine,
            loss_model=self._loss_model(),
            samples=self.samples,
            min_p_front=self.min_p_front,
            max_unvalidated_share=self.max_unvalidated_share,
            seed=self.seed,
            space=space,
            max_weight_bytes=None if self.max_weight_gb is None else self.max_weight_gb * 1e9,
            prompt_tokens=self.prompt_tokens,
            context_tokens=self.context_tokens,
            quant_method=self.quant_method,
            train_tokens=self.train_tokens,
            max_decode_ms=self.max_decode_ms,
            max_active_params=self.max_active_params,
            max_extrapolation=self.max_extrapolation,
            sampler=self.sampler,
        ).validated()

    def _loss_model(self):
        from scaling.laws.card import DEFAULT_CARD, load_builtin_card
        from scaling.laws.fit import FitResult
        from search.plan.loss_model import FitLossModel

        if self.fit is not None and self.law_card is not None:
            raise UserError("give one of fit or law_card, not both")
        if self.fit is not None:
            try:
                text = json.dumps(self.fit, allow_nan=False)
            except ValueError:
                raise UserError("fit: holds NaN or infinity; give a fit from POST /v1/fits") from None
            return FitLossModel(FitResult.from_json(text))
        return load_builtin_card(self.law_card or DEFAULT_CARD)  # names only: no server paths


def _parse_space(table: dict[str, Any]):
    """The body's ``space`` as a space file's table is read (:meth:`SearchSpace.from_table`), with
    a grid bounded by :data:`MAX_GRID_SHAPES` (the large space bounds itself; the trials, its work)."""
    import math

    from search.plan.space import SearchSpace

    space = SearchSpace.from_table(table)
    if getattr(space, "kind", "grid") != "large":
        lists = ("n_layers", "d_model", "n_experts", "top_k", "granularity", "n_shared_experts", "ffn_ratio")
        combinations = math.prod(len(getattr(space, name)) for name in lists)
        if combinations > MAX_GRID_SHAPES:
            raise UserError(f"space: {combinations:,} combinations, over the limit of {MAX_GRID_SHAPES:,}; "
                            'narrow the lists, or give kind = "large" for a sampled search')  # fmt: skip
    return space


# --- responses ------------------------------------------------------------------------------------
class Open(BaseModel):
    """A response whose documented keys are listed; others may follow."""

    model_config = ConfigDict(extra="allow")


class Health(BaseModel):
    status: Literal["ok"]
    store: str = Field(description="the store's database kind (sqlite, postgresql)")
    auth: bool = Field(description="whether changing requests need a bearer token")
    queue_limit: int


class ArchSummary(Open):
    total_params: int
    active_params: int
    embedding_params: int
    non_embedding_params: int
    non_embedding_active_params: int
    n_layers: int
    d_model: int
    n_experts: int
    top_k: int
    n_shared_experts: int
    expert_d_ff: int
    flops_per_token: float
    weight_bytes: int
    kv_cache_bytes_per_token: float


class Prediction(Open):
    device: str
    backend: str
    weight_bytes: int
    kv_cache_bytes: int
    peak_memory_bytes: int
    prefill_ms: float
    decode_tokens_per_s: float
    fits_in_memory: bool


class DeviceSummary(Open):
    name: str
    recommended_backend: str
    backends: dict[str, Any]
    builtin: bool


class RunListing(Open):
    id: str
    sweep: str | None
    status: str
    total_params: int | None
    active_params: int | None
    n_experts: int | None
    top_k: int | None
    tokens: int | None
    flops: float | None
    final_val_loss: float | None


class JobSubmitted(BaseModel):
    id: str
    kind: Literal["plan", "fit"]
    status: Literal["pending"]


class JobListing(BaseModel):
    id: str
    kind: str
    status: Literal["pending", "running", "finished", "failed", "cancelled"]
    created_at: float | None
    finished_at: float | None
    error: str | None


class Job(JobListing):
    result: dict[str, Any] | None = Field(
        None, description="a plan (as moeplan plan --json) or a fit (as moeplan fit --json), once finished"
    )


class Problem(BaseModel):
    detail: str
