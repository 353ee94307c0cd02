"""Where each :class:`search.plan.request.PlanRequest` field appears on the two faces.

``FACES[field] = (CLI flag, HTTP body field)``. A face that does not offer a field says why in
:data:`NOT_OFFERED`. ``tests/plan/test_plan_faces.py`` fails when a field of the request is
missing from this table, or from a face that the table says offers it, so a new field cannot
reach one face and not the other unnoticed. Units convert at the face (``--memory-gb`` and
``memory_gb`` are 10^9 bytes; the request holds bytes).
"""

from __future__ import annotations

from collections.abc import Callable

from scaling.errors import UserError

FACES: dict[str, tuple[str | None, str | None]] = {
    "device": ("--device", "device"),
    "memory_budget_bytes": ("--memory-gb", "memory_gb"),
    "objectives": ("--objectives", "objectives"),
    "loss_model": ("--law-card", "law_card"),  # and --fit / fit: a fit instead of a card
    "samples": ("--samples", "samples"),
    "min_p_front": ("--min-p-front", "min_p_front"),
    "max_extrapolation": ("--max-extrapolation", "max_extrapolation"),
    "trials": ("--trials", "trials"),
    "train_tokens": ("--train-tokens", "train_tokens"),
    "prompt_tokens": ("--prompt-tokens", "prompt_tokens"),
    "context_tokens": ("--context-tokens", "context_tokens"),
    # and --precision / precision; the CLI also takes --space FILE and the body a space object (the
    # file's [space] table), whose kind = "large" selects the large space (search.plan.large_space)
    "space": ("--schemes", "schemes"),
    "storage": ("--storage", None),
    "study": ("--study", None),
    "seed": ("--seed", "seed"),
    "exhaustive": ("--exhaustive", "exhaustive"),
    "engine": ("--engine", "engine"),
    "latency_oracle": ("--measure", None),
    "max_decode_ms": ("--max-decode-ms", "max_decode_ms"),
    "max_active_params": ("--max-active-params", "max_active_params"),
    "max_weight_bytes": ("--max-weight-gb", "max_weight_gb"),
    "backend": ("--backend", "backend"),
    "quant_method": ("--quant-method", "quant_method"),
    "max_unvalidated_share": ("--max-unvalidated-share", "max_unvalidated_share"),
    "sampler": ("--sampler", "sampler"),
}

NOT_OFFERED: dict[tuple[str, str], str] = {
    ("storage", "http"): "an Optuna storage is a server file or database; the service keeps its own jobs",
    ("study", "http"): "studies live in a storage, which HTTP callers cannot name",
    ("latency_oracle", "http"): "measuring trains nothing but runs every shape on the server's CPU: CLI only",
}


def spell(face: str) -> Callable[[str], str | None]:
    """A face's name for a request field (``"cli"``: its flag; ``"http"``: its body field)."""
    column = {"cli": 0, "http": 1}[face]
    return lambda field: FACES[field][column] if field in FACES else None


def translated(error: UserError, face: str) -> UserError:
    """``error`` in the face's spelling where it names request fields (a FieldError); else as is."""
    from search.plan.request import FieldError

    if not isinstance(error, FieldError):
        return error
    spelled = UserError(error.render(spell(face)))
    spelled.field = FACES.get(error.field, (None, error.field))[1] or error.field  # the body's name, for a 422's loc
    return spelled
