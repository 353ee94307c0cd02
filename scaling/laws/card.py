"""The planner's law card: a dense base law and the MoE terms that make its dense-equivalent size.

``loss = L_base(N_eq, D)`` with ``N_eq = N_active * M``, ``ln M`` the sum of the MoE terms
(:mod:`scaling.laws.effective`) on the model's *physical* description (:mod:`scaling.laws.physical`:
expansion R = E·G / k·G, active routed experts A = k·G, shared experts), so every labelling of one
model gives one loss. ``N_eq`` never exceeds the model's total parameters (DeepSeekMoE 2024 and
Krajewski et al. 2024: a dense model of the MoE's total size is its upper bound; no evidence at
scale shows an MoE past it). Each term records its form(s), parameters with replicates (bootstrap,
or published fits and priors), the data it rests on and its range, and its out-of-sample check. A
card predicts by sampling: each sample draws one replicate of every term; the prediction is the
median over samples, with a 90% interval.

Shapes are given in canonical columns: ``N`` (active parameters), ``D`` (training tokens, in the
base law's tokens), ``E`` (expansion), ``k`` (top-k at G = 1), ``G``, ``S`` (shared experts), and
optionally ``N_total``.

A card may also hold a ``quantization`` term: the penalty law of
:mod:`scaling.laws.quant_penalty` fitted on quantised proxies, which turns the bf16 loss into the
loss at a deployment precision scheme. Its samples are drawn with the other terms', so the
interval at int4 carries both. A relative penalty (a fraction of the loss) is unit-free; an
absolute one is in nats/byte and is converted to the card's unit with its bytes per token.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scaling.errors import UserError
from scaling.laws import effective
from scaling.laws.card_levels import LEVEL, QUANT_TERM
from scaling.laws.card_summary import summary
from scaling.laws.penalty_forms import FORMS as PENALTY_FORMS
from scaling.laws.penalty_forms import PARAMS as PENALTY_PARAMS
from scaling.laws.penalty_predict import penalty_samples
from scaling.laws.physical import physical_columns
from scaling.laws.units import NATS_PER_BYTE, LossUnit
from scaling.shape.scheme import METHODS, Scheme

FORMAT = "moeplan-law-card/1"
SHAPE_COLUMNS = ("N", "D", "E", "k", "G", "S")
TERM_FORMS = {  # kind -> form -> parameter names
    "base": {"chinchilla": ("E", "A", "B", "alpha", "beta")},
    "expansion": {"clark": ("m0", "m1", "E_max")},
    "granularity": {"krajewski": ("a", "alpha", "g", "gamma", "kappa")},
    "shared": {"prior": ("s",)},
    "quantization": {name: PENALTY_PARAMS for name in PENALTY_FORMS},
}
RETIRED = {  # terms and forms of earlier cards that counted one physical axis twice
    "top_k": "top-k at fixed E/k and granularity are one physical axis (k·G active experts); the card prices "
    "it once, as granularity",
}
MOE_TERMS = ("expansion", "granularity", "shared")
MAX_EXTRAPOLATION = 100.0  # a term whose data lie further than this from a shape is unvalidated there
DEFAULT_METHOD = "rtn"
DEFAULT_SAMPLES = 200


@dataclass
class TermForm:
    """One form of a term: its weight among the term's forms, point parameters and replicates."""

    params: dict[str, float]
    replicates: dict[str, list[float]] = field(default_factory=dict)
    weight: float = 1.0

    def n_replicates(self) -> int:
        return len(next(iter(self.replicates.values()))) if self.replicates else 0


@dataclass
class Term:
    """One term of the card, with where it comes from and how far it can be trusted."""

    kind: str
    forms: dict[str, TermForm]
    source: str
    data_range: dict[str, list[float]] = field(default_factory=dict)
    backtest: dict[str, Any] | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def validation(self) -> str | None:
        """Why the term is unvalidated (no out-of-sample check), or None when it has one."""
        if not self.backtest:
            return "no out-of-sample check"
        if "error" in self.backtest:
            return f"no out-of-sample check ({self.backtest['error']})"
        return None

    def conf_int(self, level: float = LEVEL) -> pd.DataFrame:
        """Per form and parameter: the value and the percentile interval of its replicates."""
        rows = []
        for name, form in self.forms.items():
            for param, value in form.params.items():
                values = np.asarray(form.replicates.get(param, []), dtype=float)
                lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2]) if len(values) else (np.nan,) * 2
                rows.append({"form": name, "param": param, "value": value, "lower": lo, "upper": hi})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        intervals = self.conf_int()
        return {
            "kind": self.kind,
            "source": self.source,
            "range": self.data_range,
            "backtest": self.backtest,
            "evidence": self.evidence,
            "notes": self.notes,
            "forms": {
                name: {
                    "weight": form.weight,
                    "params": form.params,
                    "ci90": {  # LEVEL
                        row.param: [_plain(row.lower), _plain(row.upper)]
                        for row in intervals[intervals["form"] == name].itertuples()
                    },
                    "replicates": form.replicates,
                }
                for name, form in self.forms.items()
            },
        }

    @classmethod
    def from_dict(cls, kind: str, document: dict[str, Any]) -> Term:
        if kind in RETIRED:
            raise UserError(f"law card: term {kind!r} is retired: {RETIRED[kind]}; rebuild it (moeplan laws fit)")
        if kind not in TERM_FORMS:
            raise UserError(f"law card: unknown term {kind!r}; known terms: {', '.join(TERM_FORMS)}")
        forms = {}
        for name, body in (document.get("forms") or {}).items():
            expected = TERM_FORMS[kind].get(name)
            if expected is None:
                known = ", ".join(TERM_FORMS[kind])
                raise UserError(
                    f"law card: term {kind!r} has unknown form {name!r} (known: {known}); an earlier card's "
                    "forms priced labels, not the model as built: rebuild it (moeplan laws fit)"
                )
            params = {p: float(v) for p, v in (body.get("params") or {}).items()}
            missing = [p for p in expected if p not in params]
            if missing:
                raise UserError(f"law card: term {kind!r} form {name!r} lacks parameter(s) {missing}")
            replicates = {p: [float(x) for x in v] for p, v in (body.get("replicates") or {}).items()}
            for value in [*params.values(), *(x for v in replicates.values() for x in v)]:
                if not math.isfinite(value):
                    raise UserError(f"law card: term {kind!r} form {name!r} has a non-finite parameter")
            forms[name] = TermForm(params, replicates, float(body.get("weight", 1.0)))
        if not forms:
            raise UserError(f"law card: term {kind!r} has no forms")
        data_range = document.get("range")
        if kind != QUANT_TERM and (not isinstance(data_range, dict) or not data_range):
            raise UserError(
                f"law card: term {kind!r} has no data range, so no plan can say how far it reaches past its "
                "evidence; give its 'range' (variable: [low, high])"
            )
        return cls(
            kind=kind,
            forms=forms,
            source=str(document.get("source", "")),
            data_range=document.get("range") or {},
            backtest=document.get("backtest"),
            evidence=document.get("evidence") or {},
            notes=str(document.get("notes", "")),
        )


@dataclass
class LawCard:
    """A law card: terms by kind, the loss unit of its predictions, and its provenance."""

    name: str
    unit: LossUnit
    terms: dict[str, Term]
    notes: str = ""
    path: str | None = None
    proxy_check: dict[str, Any] = field(default_factory=dict)  # the proxies' posterior-predictive check

    def __post_init__(self) -> None:
        if "base" not in self.terms:
            raise UserError("law card: a card needs a 'base' term (the dense law that gives the absolute loss)")

    # --- prediction ---------------------------------------------------------------------------
    def sample_params(self, n_samples: int = DEFAULT_SAMPLES, seed: int = 0) -> dict[str, Any]:
        """For each term: the form each sample uses, and each parameter's value per sample."""
        rng = np.random.default_rng(seed)
        draws = {}
        for kind, term in self.terms.items():
            names = list(term.forms)
            weights = np.array([term.forms[n].weight for n in names], dtype=float)
            chosen = rng.choice(len(names), size=n_samples, p=weights / weights.sum())
            params: dict[str, np.ndarray] = {}
            for index, name in enumerate(names):
                form, mask = term.forms[name], chosen == index
                count = form.n_replicates()
                picks = rng.integers(0, count, size=n_samples) if count else None
                for param, value in form.params.items():
                    values = np.asarray(form.replicates[param])[picks] if count else np.full(n_samples, value)
                    params.setdefault(param, np.zeros(n_samples))[mask] = values[mask]
            draws[kind] = {"forms": np.array(names)[chosen], "params": params}
        return draws

    def log_multiplier(
        self, shapes: dict[str, np.ndarray], draws: dict[str, Any], exclude: frozenset[str] = frozenset()
    ) -> np.ndarray:
        """ln M, (shapes, samples): the sum of the MoE terms the card has (but ``exclude``) on the
        shapes' physical description, capped at ln(N_total / N)."""
        return sum(self.term_parts(shapes, draws, exclude).values(), np.zeros((len(shapes["N"]), 1)))

    def term_parts(
        self, shapes: dict[str, np.ndarray], draws: dict[str, Any], exclude: frozenset[str] = frozenset()
    ) -> dict[str, np.ndarray]:
        """Each MoE term's share of ln M, (shapes, samples); the cap on N_eq is taken from the terms in
        proportion to their (positive) parts, so the parts always sum to the capped ln M."""
        physical = physical_columns(shapes)
        moe = physical["moe"].reshape(-1, 1)
        sparse = (physical["R"] > 1).reshape(-1, 1)  # every expert active: no routing gain of any kind
        parts = {}
        for kind in MOE_TERMS:
            if kind not in draws or kind in exclude:
                continue
            params = draws[kind]["params"]
            if kind == "expansion":
                part = effective.log_expansion(physical["R"], physical["N"], **params)
            elif kind == "granularity":
                part = effective.log_granularity(physical["A"], **params) * sparse
            else:
                part = effective.log_shared(physical["shared"], params["s"])
            parts[kind] = np.where(moe, part, 0.0)
        if not parts:
            return parts
        total = sum(parts.values())
        ceiling = np.log(physical["N_total"] / physical["N"]).reshape(-1, 1)
        positive = sum(np.maximum(p, 0.0) for p in parts.values())
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.where(total > ceiling, (positive - (total - ceiling)) / positive, 1.0)
        return {kind: np.where(part > 0, part * scale, part) for kind, part in parts.items()}

    def predict_samples(
        self,
        shapes: pd.DataFrame | dict[str, Any],
        n_samples: int = DEFAULT_SAMPLES,
        seed: int = 0,
        *,
        scheme: Scheme | None = None,
        arch: Any = None,
        method: str = DEFAULT_METHOD,
        exclude: frozenset[str] = frozenset(),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Loss and dense-equivalent parameters for every shape under every sample: two (n, S) arrays.

        Args:
            shapes: Canonical columns (N, D, E, k, G, S, optionally N_total), one row per shape.
            n_samples: Parameter samples.
            seed: Seeds the samples (the same seed draws the same parameters for every shape).
            scheme: A deployment precision scheme: the loss is then the loss at that precision,
                with the penalty term's samples drawn beside the others'. ``None`` or an
                unquantised scheme: the bf16 loss.
            arch: The shapes' architectures (an ArchSpec or ArchArrays in the rows' order): a
                penalty is spread over the model's parts, which the canonical columns do not give.
            method: The quantisation method the deployment uses (``rtn`` or ``gptq``).
            exclude: Terms left out (as if the card had none): what the loss is without them.
        """
        columns = shape_columns(shapes)
        draws = self.sample_params(n_samples, seed)
        n_eq = columns["N"].reshape(-1, 1) * np.exp(self.log_multiplier(columns, draws, exclude))
        loss = effective.chinchilla_loss(n_eq, columns["D"], **draws["base"]["params"])
        if scheme is not None and scheme.quantised_parts() and QUANT_TERM not in exclude:
            relative, absolute = self._penalty(draws, scheme, arch, method, columns["D"], len(loss))
            loss = loss * (1 + relative) + absolute
        return loss, n_eq

    def predict(
        self,
        shapes: pd.DataFrame | dict[str, Any],
        n_samples: int = DEFAULT_SAMPLES,
        seed: int = 0,
        *,
        scheme: Scheme | None = None,
        arch: Any = None,
        method: str = DEFAULT_METHOD,
    ) -> pd.DataFrame:
        """Median loss, its 90% interval and the median dense-equivalent size, one row per shape
        (at ``scheme``'s precision when given: see :meth:`predict_samples`)."""
        loss, n_eq = self.predict_samples(shapes, n_samples, seed, scheme=scheme, arch=arch, method=method)
        lower, median, upper = np.quantile(loss, [(1 - LEVEL) / 2, 0.5, (1 + LEVEL) / 2], axis=1)
        return pd.DataFrame(
            {
                "loss": median,
                "loss_lower": lower,
                "loss_upper": upper,
                "dense_equivalent_params": np.median(n_eq, axis=1),
                "loss_unit": str(self.unit),
            }
        )

    # --- deployment precision -------------------------------------------------------------------
    @property
    def penalty(self) -> Term | None:
        """The quantisation penalty term, or None when the card has none."""
        return self.terms.get(QUANT_TERM)

    def require_penalty(self, what: str, label: str = "a quantised precision") -> Term:
        """The penalty term; refuses, naming ``what`` (e.g. ``--precision int4``), when there is none."""
        if self.penalty is None:
            raise UserError(
                f"{what}: card {self.name!r} has no quantisation penalty term, so it cannot price {label}; use one "
                "of fp32, bf16, fp16, or a card fitted on quantisation measurements (moeplan laws fit --sweep STORE)"
            )
        return self.penalty

    def _penalty(
        self, draws: dict[str, Any], scheme: Scheme, arch: Any, method: str, tokens: np.ndarray, n_shapes: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Relative and absolute (card unit) penalty samples, each (shapes, samples)."""
        self.require_penalty(f"scheme {scheme.name!r}")
        if method not in METHODS:
            raise UserError(f"unknown quantisation method {method!r}; known: {', '.join(METHODS)}")
        if arch is None:
            raise UserError(
                f"scheme {scheme.name!r}: the penalty needs each shape's architecture (its parts), not only its "
                "canonical columns; give --arch, --preset or --hf-config"
            )
        forms, params = draws[QUANT_TERM]["forms"], draws[QUANT_TERM]["params"]
        thetas = np.column_stack([params[name] for name in PENALTY_PARAMS])
        samples = len(forms)
        relative, absolute = np.zeros((n_shapes, samples)), np.zeros((n_shapes, samples))
        for name in np.unique(forms):
            form, chosen = PENALTY_FORMS[name], forms == name
            uses_data = form.data and bool(np.any(thetas[chosen, PENALTY_PARAMS.index("gamma_D")] != 0))
            uses_data = uses_data and form.tokens_unit == "bytes"  # a published law counts tokens already
            data_tokens = tokens * self._bytes_per_token("the penalty's data term") if uses_data else tokens
            values = penalty_samples(thetas[chosen], form, arch, scheme, method, data_tokens)
            if values.shape[0] != n_shapes:
                raise UserError(f"arch gives {values.shape[0]} shapes for {n_shapes} rows of shapes")
            if form.relative:
                relative[:, chosen] = values
            else:
                absolute[:, chosen] = values * self._bytes_per_token("an absolute penalty (nats/byte)")
        return relative, absolute

    def _bytes_per_token(self, what: str) -> float:
        """Bytes per token of the card's unit (1 for nats/byte): what turns the proxies' bytes into its tokens."""
        if self.unit.per == NATS_PER_BYTE:
            return 1.0
        if self.unit.bytes_per_token is None:
            raise UserError(
                f"law card {self.name!r}: {what} is in bytes, and the card's tokenizer {self.unit.tokenizer!r} "
                "has no bytes_per_token to convert it; refit the penalty with a relative form without a data term"
            )
        return float(self.unit.bytes_per_token)

    def unvalidated(
        self, extrapolation: dict[str, dict[str, float]], limit: float = MAX_EXTRAPOLATION
    ) -> dict[str, str]:
        """The terms a plan must call unvalidated, with why: no out-of-sample check, or data more than
        ``limit`` times from the shapes (an :meth:`extrapolation` report)."""
        reasons = {}
        for kind, term in self.terms.items():
            why = term.validation()
            far = {v: r for v, r in extrapolation.get(kind, {}).items() if r > limit}
            if why is None and far:
                why = "data " + ", ".join(f"{v} {r:.3g}x" for v, r in far.items()) + f" from the shapes (> {limit:g}x)"
            if why is not None:
                reasons[kind] = why
        return reasons

    def extrapolation(
        self, shapes: pd.DataFrame | dict[str, Any], with_penalty: bool = False
    ) -> dict[str, dict[str, float]]:
        """How far each term reaches past its data: the largest ratio of a shape's value to the
        term's fitted range, per variable (1 = inside the range). The base law is checked at the
        dense-equivalent size ``N_eq`` where the shapes give it; the penalty term only
        ``with_penalty`` (a quantised deployment)."""
        columns = shape_columns(shapes)
        physical = physical_columns(columns)
        columns = {**columns, "R": physical["R"], "A": physical["A"], "D/N": columns["D"] / columns["N"]}
        moe = physical["moe"]
        report = {}
        for kind, term in self.terms.items():
            if kind == QUANT_TERM and not with_penalty:
                continue
            ratios = {}
            for variable, (low, high) in term.data_range.items():
                values = columns.get(variable)
                if kind == "base" and variable == "N" and "N_eq" in shapes:  # the base law sees N_eq
                    values = np.asarray(shapes["N_eq"], dtype=float)
                if values is None:
                    continue
                values = values[moe] if kind in MOE_TERMS else values
                if not len(values):
                    continue
                above = values.max() / high if high > 0 else 1.0
                below = low / values.min() if low > 0 and values.min() > 0 else 1.0
                ratios[variable] = float(max(above, below, 1.0))
            report[kind] = ratios
        return report

    # --- reading and writing ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "loss_unit": self.unit.to_dict(),
            "notes": self.notes,
            "terms": {kind: term.to_dict() for kind, term in self.terms.items()},
            "bound": "N_eq <= N_total: no MoE is worth more than the dense model of its total size (DeepSeekMoE "
            "2024, Krajewski et al. 2024); no evidence at scale shows one past it",
            "interval_level": LEVEL,
            "proxy_check": self.proxy_check,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, document: Any, path: str | None = None) -> LawCard:
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise UserError(f"{path or 'the document'} is not a moeplan law card (format {FORMAT!r})")
        terms = document.get("terms")
        if not isinstance(terms, dict):
            raise UserError("law card: 'terms' must be a table of terms")
        return cls(
            name=str(document.get("name", "")),
            unit=LossUnit.from_dict(document["loss_unit"]),
            terms={kind: Term.from_dict(kind, body) for kind, body in terms.items()},
            notes=str(document.get("notes", "")),
            path=path,
            proxy_check=document.get("proxy_check") or {},
        )

    def summary(self) -> str:
        """The card as text: each term, its source and range, parameters with 90% intervals, its
        out-of-sample check or ``unvalidated``, bounds hit and unidentified parameters."""
        return summary(self)


def shape_columns(shapes: pd.DataFrame | dict[str, Any]) -> dict[str, np.ndarray]:
    """The canonical shape columns as float arrays, checked: present, finite and positive."""
    columns = {}
    for name in (*SHAPE_COLUMNS, "N_total"):
        if name == "N_total" and name not in shapes:
            continue
        if name not in shapes:
            raise UserError(f"shapes lack column {name!r}; the columns are {', '.join(SHAPE_COLUMNS)}")
        values = np.asarray(shapes[name], dtype=float).reshape(-1)
        if not np.all(np.isfinite(values)):
            raise UserError(f"column {name!r} has missing or non-finite values")
        if np.any(values < 0) or (name != "S" and np.any(values == 0)):
            raise UserError(f"column {name!r} must be positive{' or zero' if name == 'S' else ''}")
        columns[name] = values
    return columns


DEFAULT_CARD = "default"


def card_path(name: str = DEFAULT_CARD) -> Path:
    """A built-in card's file (``default``: the planner's default)."""
    return Path(str(resources.files("scaling.laws") / "cards" / f"{name}.json"))


def builtin_cards() -> list[str]:
    return sorted(path.stem for path in card_path().parent.glob("*.json"))


def load_builtin_card(name: str) -> LawCard:
    """A built-in card by name only (for the HTTP service: clients never name server paths)."""
    if name not in builtin_cards():
        raise UserError(f"unknown law card {name!r}; built-in cards: {', '.join(builtin_cards())}")
    return load_card(card_path(name))


def load_card(reference: str | Path | None = None) -> LawCard:
    """A card by path, or a built-in card by name (default: ``default``)."""
    reference = DEFAULT_CARD if reference is None else reference
    path = Path(reference)
    if not path.exists() and path.suffix == "":
        path = card_path(str(reference))
    if path.is_dir() or not path.is_file():
        raise UserError(f"law card {str(reference)!r} does not exist; give a card file or a built-in card name")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"law card {str(path)!r} is not valid JSON: {error}") from None
    return LawCard.from_dict(document, str(path))


def _plain(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)
