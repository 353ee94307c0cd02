"""A shape's story: why the planner prices one shape as it does, in one JSON document.

For one architecture at one deployment (device, backend, precision or scheme, law card, tokens):
its physical counts and accounting, its peak memory by part (weights per part, KV cache,
activations, the runtime's own bytes), its prefill and decode latency per cost term with the
state (``spec``, ``prior``, ``measured``) of the profile numbers each term rests on, and its
loss decomposed term by term of the law card with each term's evidence and extrapolation ratio.
The page (``POST /v1/shapes/story``) and ``moeplan compare`` read it; the numbers are the same
functions the planner calls, at the same samples and seed, so the story's loss is the plan's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.shape.hf_config import to_hf_config
from scaling.shape.scheme import Scheme, scheme_for_precision
from search.device.cost import TERMS, forward_terms, peak_memory_bytes, predict
from search.device.profiles import DeviceProfile
from search.device.uncertainty import has_uncertainty

STATE_ORDER = ("prior", "measured", "spec")  # a term is as weak as its weakest number
# The profile numbers each cost term reads (``compute`` stands for the part's compute peak).
TERM_INPUTS = {
    "attention": ("compute", "efficiency.compute", "efficiency.half_tokens", "bandwidth", "efficiency.overlap",
                  "overheads.dequant_flops_per_weight"),
    "attention_scores": ("compute_flops.fp16", "efficiency.compute", "efficiency.half_tokens", "bandwidth",
                         "efficiency.overlap"),
    "dense_mlp": ("compute", "efficiency.compute", "efficiency.half_tokens", "bandwidth", "efficiency.overlap",
                  "overheads.dequant_flops_per_weight"),
    "router_and_shared": ("compute", "efficiency.compute", "efficiency.half_tokens", "bandwidth",
                          "efficiency.overlap", "overheads.dequant_flops_per_weight"),
    "routed_experts": ("compute", "efficiency.compute", "efficiency.expert_compute", "efficiency.half_tokens",
                       "bandwidth", "efficiency.overlap", "overheads.dequant_flops_per_weight"),
    "routing": ("overheads.per_moe_layer_s", "overheads.permute_passes", "bandwidth"),
    "expert_dispatch": ("overheads.per_expert_s",),
    "output_head": ("compute", "efficiency.compute", "bandwidth", "efficiency.overlap"),
    "fixed": ("overheads.per_layer_s", "overheads.per_forward_s"),
}  # fmt: skip
TERM_LABELS = {
    "attention": "attention projections (q, k, v, o)",
    "attention_scores": "attention over the KV cache",
    "dense_mlp": "dense MLP blocks",
    "router_and_shared": "router and shared experts",
    "routed_experts": "routed experts",
    "routing": "routing (top-k, permutation traffic)",
    "expert_dispatch": "per-expert dispatch",
    "output_head": "output head (logits)",
    "fixed": "fixed costs (per layer, per forward pass)",
}


@dataclass
class Deployment:
    """Where and how a shape runs, and how its loss is priced (as a plan request gives them)."""

    device: DeviceProfile
    precision: str = "int4"
    scheme: Scheme | None = None  # a scheme of the plan's menu: every part priced at its format
    loss_model: Any = None
    train_tokens: float = 1e12
    samples: int = 200
    seed: int = 0
    quant_method: str = "rtn"
    prompt_tokens: int = 512
    context_tokens: int = 2048


def shape_story(spec: ArchSpec, deployment: Deployment) -> dict[str, Any]:
    """The story of ``spec`` at ``deployment`` (see the module's docstring)."""
    return {
        "name": spec.name,
        "arch": spec.to_dict(),
        "accounting": _accounting(spec, deployment),
        "memory": memory_breakdown(spec, deployment),
        "latency": latency_breakdown(spec, deployment),
        "loss": loss_breakdown(spec, deployment),
        "downloads": {"arch_toml": arch_toml(spec), "hf_config": to_hf_config(spec)},
    }


def _loss_scheme(deployment: Deployment) -> Scheme | None:
    return deployment.scheme if deployment.scheme is not None else scheme_for_precision(deployment.precision)


def _accounting(spec: ArchSpec, deployment: Deployment) -> dict[str, Any]:
    summary = accounting.summary(spec, deployment.precision)
    summary.pop("arch")
    parts = accounting.parameter_breakdown(spec)
    summary["parameters_by_part"] = {key: int(value) for key, value in parts.items()}
    summary["law_columns"] = {key: float(value) for key, value in accounting.law_columns(spec).items()}
    return summary


def memory_breakdown(spec: ArchSpec, deployment: Deployment) -> dict[str, Any]:
    """Peak memory at the context: weights per scheme part, KV cache, activations, runtime bytes."""
    d = deployment
    context = max(d.context_tokens, d.prompt_tokens)
    memory = peak_memory_bytes(spec, d.device, d.precision, context, d.prompt_tokens, scheme=d.scheme)
    scheme = _loss_scheme(d)
    if scheme is not None:
        parts = accounting.scheme_part_bytes(spec, scheme)
    else:  # fp32: every weight at its width
        width = accounting.bytes_per_weight(d.precision)
        parts = {part: value * width for part, value in accounting.part_parameters(spec).items()}
        breakdown = accounting.parameter_breakdown(spec)
        parts["vectors"] = (breakdown["attention_vectors"] + breakdown["norms"]) * width
    weights = {part: int(round(float(value))) for part, value in parts.items() if float(value) > 0}
    rest = int(round(float(memory["weight_bytes"]))) - sum(weights.values())
    if rest:  # the accounting's own rounding or a part the scheme table does not name
        weights["other"] = rest
    return {
        "context_tokens": int(context),
        "prompt_tokens": int(d.prompt_tokens),
        "weights_by_part_bytes": weights,
        "weight_bytes": int(round(float(memory["weight_bytes"]))),
        "kv_cache_bytes": int(round(float(memory["kv_cache_bytes"]))),
        "activation_bytes": int(round(float(memory["activation_bytes"]))),
        "runtime_bytes": int(round(float(d.device["overheads.runtime_bytes"]))),
        "peak_memory_bytes": int(round(float(memory["peak_memory_bytes"]))),
        "usable_memory_bytes": int(round(d.device.usable_bytes)),
    }


def _inputs(term: str, device: DeviceProfile, precision: str) -> list[dict[str, Any]]:
    """The profile facts a cost term reads, each with its value, state, basis and source."""
    keys = []
    for key in TERM_INPUTS[term]:
        if key == "compute":
            key = f"compute_flops.{precision}" if f"compute_flops.{precision}" in device.facts else "compute_flops.fp16"
        keys += ["bandwidth_bytes_per_s", "efficiency.bandwidth"] if key == "bandwidth" else [key]
    facts = []
    for key in dict.fromkeys(keys):
        fact = device.facts.get(key)
        if fact is not None:
            facts.append({"key": key, "value": fact["value"], "state": fact["state"], "basis": fact.get("basis", ""),
                          "source": fact.get("source", "")})  # fmt: skip
    return facts


def _term_state(facts: list[dict[str, Any]]) -> str:
    states = {fact["state"] for fact in facts}
    return next((state for state in STATE_ORDER if state in states), "spec")


def latency_breakdown(spec: ArchSpec, deployment: Deployment) -> dict[str, Any]:
    """Prefill and decode milliseconds per cost term (:data:`search.device.cost.TERMS`)."""
    d, device = deployment, deployment.device
    prediction = predict(spec, device, d.precision, d.prompt_tokens, d.context_tokens, scheme=d.scheme)
    phases = {}
    for phase, new, cached in (("prefill", d.prompt_tokens, 0), ("decode", 1, d.context_tokens)):
        seconds = forward_terms(spec, device.values, d.precision, new, cached, scheme=d.scheme)
        total = sum(float(v) for v in seconds.values())
        terms = []
        for term in TERMS:
            value = float(seconds[term])
            if value <= 0:
                continue
            facts = _inputs(term, device, d.precision)
            terms.append({"term": term, "label": TERM_LABELS[term], "ms": value * 1e3, "share": value / total,
                          "state": _term_state(facts), "inputs": facts})  # fmt: skip
        phases[phase] = {"total_ms": total * 1e3, "terms": terms}
    calibrated = has_uncertainty(device)
    phases["prefill"]["ci90_ms"] = prediction.get("prefill_ms_ci90")
    phases["decode"]["tokens_per_s"] = prediction["decode_tokens_per_s"]
    phases["decode"]["tokens_per_s_ci90"] = prediction.get("decode_tokens_per_s_ci90")
    return {
        "device": device.name,
        "backend": device.backend,
        "runtime": device.runtime,
        "calibrated": calibrated,
        "interval": "90% from the backend's calibration" if calibrated else "no interval (uncalibrated prior)",
        "prompt_tokens": int(d.prompt_tokens),
        "context_tokens": int(d.context_tokens),
        **phases,
    }


def loss_breakdown(spec: ArchSpec, deployment: Deployment) -> dict[str, Any]:
    """The loss term by term: each card term's step (median and 90% interval, paired samples), its
    source, evidence, data range and extrapolation ratio; the sum is the plan's predicted loss."""
    from scaling.laws.card import LawCard, load_card

    d = deployment
    model = d.loss_model if d.loss_model is not None else load_card()
    columns = {k: np.asarray([float(v)]) for k, v in accounting.law_columns(spec).items()}
    shapes = pd.DataFrame({**columns, "D": [float(d.train_tokens)]})
    scheme = _loss_scheme(d)
    unit = str(model.unit) if model.unit is not None else None
    if not isinstance(model, LawCard):  # a single fitted law: one term, no samples
        loss, _ = model.predict_samples(shapes)
        value = float(loss[0, 0])
        terms = [{"term": model.name, "step": value, "ci90": None, "source": "moeplan fit --out", "evidence": {}}]
        return {"unit": unit, "law_card": model.name, "median": value, "ci90": None, "terms": terms,
                "train_tokens": d.train_tokens}  # fmt: skip
    quantised = scheme is not None and model.penalty is not None and bool(scheme.quantised_parts())
    options = {"scheme": scheme, "arch": spec, "method": d.quant_method} if quantised else {}
    full, n_eq = model.predict_samples(shapes, d.samples, d.seed, **options)
    shapes["N_eq"] = float(np.median(n_eq))
    ratios = model.extrapolation(shapes, with_penalty=quantised)
    terms, previous = [], None
    kinds = list(model.terms)
    for count, kind in enumerate(kinds, start=1):
        if kind == "quantization" and not quantised:
            continue
        prefix = LawCard(model.name, model.unit, {k: model.terms[k] for k in kinds[:count]})
        # a prefix of the card's terms draws the same samples for the terms it keeps: the steps pair
        samples, _ = prefix.predict_samples(shapes, d.samples, d.seed, **(options if kind == "quantization" else {}))
        step = samples[0] - (0.0 if previous is None else previous)
        previous = samples[0]
        term = model.terms[kind]
        terms.append({
            "term": kind,
            "label": "dense base law at the active parameters" if kind == "base" else f"{kind} term",
            "step": float(np.median(step)),
            "ci90": [float(v) for v in np.quantile(step, [0.05, 0.95])],
            "source": term.source,
            "range": term.data_range,
            "evidence": term.evidence,
            "backtest": term.backtest,
            "extrapolation": ratios.get(kind, {}),
        })  # fmt: skip
    low, median, high = np.quantile(full[0], [0.05, 0.5, 0.95])
    return {
        "unit": unit,
        "law_card": model.name,
        "train_tokens": d.train_tokens,
        "tokens_unit": model.unit.token_name,
        "median": float(median),
        "ci90": [float(low), float(high)],
        "dense_equivalent_params": float(np.median(n_eq)),
        "active_params": int(accounting.active_params(spec)),
        "includes_quantisation": quantised,
        "terms": terms,
    }


def arch_toml(spec: ArchSpec) -> str:
    """The shape as an ``--arch`` TOML file (fields whose value is unset are left out)."""
    lines = [f"# moeplan architecture {spec.name!r}: moeplan arch --arch FILE.toml reads it back"]
    for key, value in spec.to_dict().items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
