"""The on-device cost model: a per-component roofline for prefill and decode, and peak memory.

Every function takes one :class:`~scaling.shape.arch.ArchSpec` or many shapes at once as
:class:`~scaling.shape.accounting.ArchArrays` (numpy arrays in, arrays out), so the search can
evaluate hundreds of thousands of shapes a second with the same formulas. A profile is
resolved for one backend (cpu, gpu, npu) before it prices anything.

For a forward pass of T new tokens after c cached ones, each component (attention
projections, attention over the KV cache, dense MLPs, router and shared experts, routed
experts, output head) costs its arithmetic time ``FLOPs / rate`` and its memory time
``bytes / (bandwidth x eff_bandwidth)``, combined as ``max(a, m) + (1 - overlap) min(a, m)``
(overlap 1 is the classic roofline, 0 adds them). To these come the routing of each MoE layer
and fixed costs per layer, per touched expert and per forward pass.

* A GEMM over r rows runs at ``r / (r + T_half)`` of the compute rate (``efficiency.half_tokens``:
  packing and tile fill that a one-row matrix-vector product does not pay).
* A routed expert's GEMM sees only the rows routed to it: ``r = T k / touched`` per touched expert
  (about ``T k / E`` under balanced routing once every expert is touched), divided by an
  optional imbalance factor ``u >= 1`` (the busiest expert gets u times the mean, so the others
  get fewer). At ``u = 1`` the experts' time equals running each touched expert's GEMM in turn
  with one packing cost each.
* Prefill reads every touched expert once: in expectation ``E (1 - (1 - k/E)^T)`` of E, which
  is all of them once the prompt is long. Decode (T = 1) reads only the k selected ones.
* Each MoE layer routes: a fixed ``overheads.per_moe_layer_s`` (softmax, top-k, sort) plus the
  permutation traffic, ``permute_passes x T k d`` activation bytes through memory (gather the
  rows per expert, then scatter them back), and ``overheads.per_expert_s`` per touched expert.
* Quantised weights (int8, int4) add ``overheads.dequant_flops_per_weight`` per weight read.
* A precision scheme (:mod:`scaling.shape.scheme`) prices each part at its own format: its bytes
  per weight (codes, group scales and zero points), its dequantisation, and the compute peak of
  its bits (``compute_flops.int8``/``int4``; 3 bits falls back as the profile says, to fp16).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np

from scaling.checks import check_number, check_tokens
from scaling.errors import UserError
from scaling.shape import accounting
from scaling.shape.accounting import QUANTISED, ArchArrays, Shape
from scaling.shape.arch import ArchSpec
from scaling.shape.scheme import PARTS, PartFormat, Scheme
from search.device.profiles import DeviceProfile, compute_efficiency, compute_flops
from search.device.uncertainty import has_uncertainty, log_sds, parameter_draws

ACTIVATION_BYTES = 2  # fp16 activations on device
TERMS = (
    "attention",
    "attention_scores",
    "dense_mlp",
    "router_and_shared",
    "routed_experts",
    "routing",
    "expert_dispatch",
    "output_head",
    "fixed",
)


def _roofline(flops, bytes_moved, compute_rate, bandwidth, overlap):
    """The longer of arithmetic and memory time, plus the un-overlapped share of the shorter."""
    arithmetic, memory = flops / compute_rate, bytes_moved / bandwidth
    return np.maximum(arithmetic, memory) + (1 - overlap) * np.minimum(arithmetic, memory)


def weights_read_bytes(parts: Mapping[str, Any], formats: Mapping[str, tuple], expert_read: Any) -> Any:
    """Weight bytes one forward pass reads: every dense part, the touched experts, the head."""
    total = parts["embedding_input"] * formats["output_head"][0] + expert_read * formats["routed_experts"][0]
    for part in ("attention", "dense_mlp", "router", "shared_experts"):
        total = total + parts[part] * formats[part][0]
    return total


def effective_bandwidth(values: Mapping[str, Any], read_bytes: Any) -> Any:
    """Bandwidth a pass reading ``read_bytes`` of weights sustains: DRAM's share for the bytes
    that do not stay in the last-level cache, ``efficiency.cache_speedup`` times it for the
    ``cache_bytes`` that do (the share ``min(1, cache / read)``, as under an ideal cache between
    passes). Without ``cache_bytes`` (or a speed-up of 1) this is DRAM's bandwidth alone."""
    dram = values["bandwidth_bytes_per_s"] * values["efficiency.bandwidth"]
    cache = values.get("cache_bytes", 0.0)
    speedup = values.get("efficiency.cache_speedup", 1.0)
    resident = np.clip(cache / np.maximum(read_bytes, 1.0), 0.0, 1.0)
    return dram / ((1 - resident) + resident / speedup)


def _touched_experts(shape: Shape, tokens: Any) -> tuple[Any, Any]:
    """Experts a pass of ``tokens`` touches per MoE layer (in expectation), and the expert
    weights it reads over all MoE layers."""
    experts = np.maximum(shape.n_routed_experts, 1)
    touched = experts * (1 - (1 - shape.routed_top_k / experts) ** tokens)
    return touched, accounting.moe_layer_count(shape) * 3 * shape.d_model * shape.expert_d_ff * touched


def _saturation(rows, half_tokens):
    """Share of the compute rate a GEMM over ``rows`` rows reaches (1 for a matrix-vector product)."""
    return np.where(rows > 1, rows / (rows + half_tokens), 1.0)


def _compute_precision(fmt: PartFormat) -> str:
    """The compute peak a part's format runs at: ``int{bits}`` for integer codes, else its dtype."""
    return f"int{fmt.bits}" if fmt.quantised else fmt.dtype


def part_formats(
    precision: str,
    embedding_precision: str | None = None,
    group_size: int = accounting.DEFAULT_GROUP_SIZE,
    scheme: Scheme | None = None,
) -> dict[str, tuple[float, bool, str]]:
    """Each scheme part's (bytes per weight, quantised, compute precision): from ``scheme`` when
    given, else ``precision`` everywhere (``embedding_precision`` for the embedding and head)."""
    if scheme is not None:
        return {
            part: (fmt.bytes_per_weight(), fmt.quantised, _compute_precision(fmt)) for part, fmt in scheme.parts.items()
        }
    embedding_precision = embedding_precision or precision
    main = (accounting.bytes_per_weight(precision, group_size), precision in QUANTISED, precision)
    embedding = (  # the head's matmul runs at the main precision's peak
        accounting.bytes_per_weight(embedding_precision, group_size),
        embedding_precision in QUANTISED,
        precision,
    )
    return {part: embedding if part in ("embedding", "output_head") else main for part in PARTS}


def forward_terms(
    shape: Shape,
    values: Mapping[str, Any],
    precision: str,
    new_tokens: Any,
    cached_tokens: Any,
    kv_precision: str = "fp16",
    embedding_precision: str | None = None,
    group_size: int = accounting.DEFAULT_GROUP_SIZE,
    imbalance: Any = 1.0,
    scheme: Scheme | None = None,
) -> dict[str, Any]:
    """Seconds of one forward pass (batch 1), by component (:data:`TERMS`).

    ``values`` are a resolved profile's numbers (``DeviceProfile.values``); any of them may be
    an array that broadcasts against the shapes (the latency samples pass one column per draw).
    With ``scheme``, each part is priced at its own format and ``precision`` is only a label.
    """
    parts = accounting.parameter_breakdown(shape)
    formats = part_formats(precision, embedding_precision, group_size, scheme)
    half_tokens = values.get("efficiency.half_tokens", 0.0)
    attention_peak = compute_flops(values, "fp16") * values["efficiency.compute"]
    tokens = new_tokens
    top_k, moe_layers = shape.routed_top_k, accounting.moe_layer_count(shape)
    touched, expert_read = _touched_experts(shape, tokens)
    bandwidth = effective_bandwidth(values, weights_read_bytes(parts, formats, expert_read))
    dequant = values["overheads.dequant_flops_per_weight"]
    overlap = values.get("efficiency.overlap", 1.0)

    def peak(part: str) -> Any:
        compute = formats[part][2]
        return compute_flops(values, compute) * compute_efficiency(values, compute)

    def matmul(weights, rows, rate, part, read=None):
        """``rows`` tokens through a part's ``weights`` (active); ``read`` weights come from memory."""
        bytes_per, quantised, _ = formats[part]
        read = weights if read is None else read
        flops = 2 * weights * rows + (dequant * read if quantised else 0.0)
        return _roofline(flops, read * bytes_per, rate, bandwidth, overlap)

    dense_saturation = _saturation(tokens, half_tokens)
    terms = {"attention": matmul(parts["attention"], tokens, peak("attention") * dense_saturation, "attention")}
    # Attention over the cache: QK^T and AV of every new token against all earlier positions.
    context_sum = tokens * cached_tokens + tokens * (tokens + 1) / 2
    score_flops = 4 * shape.n_layers * shape.n_heads * shape.head_dim * context_sum
    kv_bytes = accounting.kv_cache_bytes_per_token(shape, kv_precision) * (cached_tokens + tokens)
    attention_rate = attention_peak * _saturation(tokens, half_tokens)
    terms["attention_scores"] = _roofline(score_flops, kv_bytes, attention_rate, bandwidth, overlap)
    terms["dense_mlp"] = matmul(parts["dense_mlp"], tokens, peak("dense_mlp") * dense_saturation, "dense_mlp")
    if formats["router"] == formats["shared_experts"]:
        weights = parts["router"] + parts["shared_experts"]
        terms["router_and_shared"] = matmul(weights, tokens, peak("router") * dense_saturation, "router")
    else:  # two formats: their arithmetic and memory times add before the roofline combines them
        arithmetic, memory = 0.0, 0.0
        for part in ("router", "shared_experts"):
            bytes_per, quantised, _ = formats[part]
            flops = 2 * parts[part] * tokens + (dequant * parts[part] if quantised else 0.0)
            arithmetic = arithmetic + flops / (peak(part) * dense_saturation)
            memory = memory + parts[part] * bytes_per / bandwidth
        terms["router_and_shared"] = np.maximum(arithmetic, memory) + (1 - overlap) * np.minimum(arithmetic, memory)
    # Routed experts: each touched expert's GEMM sees only its own rows.
    rows = tokens * top_k / (touched * imbalance)
    expert_rate = peak("routed_experts") * values.get("efficiency.expert_compute", 1.0) * _saturation(rows, half_tokens)
    terms["routed_experts"] = matmul(
        parts["routed_experts_active"], tokens, expert_rate, "routed_experts", read=expert_read
    )
    permute_bytes = values.get("overheads.permute_passes", 0.0) * tokens * top_k * shape.d_model * ACTIVATION_BYTES
    terms["routing"] = moe_layers * (values.get("overheads.per_moe_layer_s", 0.0) + permute_bytes / bandwidth)
    terms["expert_dispatch"] = moe_layers * touched * values.get("overheads.per_expert_s", 0.0)
    # Output head: logits for the last position only (the embedding matrix when tied).
    head = matmul(parts["embedding_input"], 1, peak("output_head"), "output_head")
    if formats["embedding"] != formats["output_head"]:
        tied = matmul(parts["embedding_input"], 1, peak("embedding"), "embedding")
        head = np.where(np.asarray(shape.tie_embeddings) > 0, tied, head)
    terms["output_head"] = head
    per_token = values.get("overheads.per_token_s", 0.0) * tokens
    terms["fixed"] = shape.n_layers * values["overheads.per_layer_s"] + values["overheads.per_forward_s"] + per_token
    return terms


def forward_seconds(
    shape: Shape,
    device: DeviceProfile,
    precision: str,
    new_tokens: Any,
    cached_tokens: Any,
    kv_precision: str = "fp16",
    group_size: int = accounting.DEFAULT_GROUP_SIZE,
    embedding_precision: str | None = None,
    imbalance: Any = 1.0,
    scheme: Scheme | None = None,
) -> Any:
    """Seconds for one forward pass of ``new_tokens`` after ``cached_tokens`` (batch 1)."""
    terms = forward_terms(
        shape,
        device.values,
        precision,
        new_tokens,
        cached_tokens,
        kv_precision,
        embedding_precision,
        group_size,
        imbalance,
        scheme,
    )
    return sum(terms.values())


def peak_memory_bytes(
    shape: Shape,
    device: DeviceProfile,
    precision: str,
    context_tokens: Any,
    prompt_tokens: Any,
    kv_precision: str = "fp16",
    embedding_precision: str | None = None,
    group_size: int = accounting.DEFAULT_GROUP_SIZE,
    scheme: Scheme | None = None,
) -> dict[str, Any]:
    """Weights (at ``scheme``, part by part, when given) + KV cache at the context + prefill
    activations + the runtime's own bytes."""
    if scheme is not None:
        weights = accounting.scheme_weight_bytes(shape, scheme)
    else:
        weights = accounting.weight_bytes(
            shape, precision, embedding_precision=embedding_precision, group_size=group_size
        )
    kv = accounting.kv_cache_bytes_per_token(shape, kv_precision) * context_tokens
    widest = np.maximum(np.maximum(shape.d_ff, shape.expert_d_ff * shape.routed_top_k), shape.d_model)
    # The residual stream, q/k/v and one MLP hidden state per prompt token, plus the logits.
    activations = prompt_tokens * (4 * shape.d_model + 2 * widest) * ACTIVATION_BYTES + 4 * shape.vocab_size
    total = weights + kv + activations + device["overheads.runtime_bytes"]
    return {"weight_bytes": weights, "kv_cache_bytes": kv, "activation_bytes": activations, "peak_memory_bytes": total}


def _check_tokens(prompt_tokens: Any, context_tokens: Any) -> Any:
    """Token counts at least 1, finite, within :data:`scaling.checks.LIMITS`, and a context that
    holds the prompt; the checker of the CLI and the service, applied to scalars and arrays alike."""
    context = prompt_tokens if context_tokens is None else context_tokens
    for name, values in (("prompt_tokens", prompt_tokens), ("context_tokens", context)):
        values = np.asarray(values, dtype=float)
        if values.size:
            check_number(float(values.min()), name, minimum=1)
            check_number(float(values.max()), name, minimum=1)
    prompt, cached = np.broadcast_arrays(np.asarray(prompt_tokens, dtype=float), np.asarray(context, dtype=float))
    short = cached < prompt
    if short.any():
        first = int(np.argmax(short))
        check_tokens(int(prompt.flat[first]), int(cached.flat[first]))
    return context


def _check_imbalance(imbalance: Any) -> None:
    if np.any(~(np.asarray(imbalance, dtype=float) >= 1)):
        raise UserError("the expert imbalance factor (busiest expert's load over the mean) must be >= 1")


def predict(
    shape: Shape,
    device: DeviceProfile,
    precision: str = "int4",
    prompt_tokens: Any = 512,
    context_tokens: Any = None,
    kv_precision: str = "fp16",
    backend: str | None = None,
    *,
    embedding_precision: str | None = None,
    imbalance: Any = 1.0,
    intervals: bool | None = None,
    n_samples: int = 1000,
    scheme: Scheme | None = None,
) -> dict[str, Any]:
    """Predicted prefill latency, decode speed and peak memory on ``device``.

    Args:
        shape: One ArchSpec, or ArchArrays for many shapes at once.
        device: The device profile.
        precision: Weight precision (fp32, bf16, fp16, int8, int4).
        prompt_tokens: Tokens prefilled in one pass.
        context_tokens: Tokens in the KV cache when a decode step runs (default: the prompt).
        kv_precision: KV-cache precision.
        backend: cpu, gpu or npu; ``None`` keeps the profile's (the recommended one unless the
            profile was resolved for another).
        embedding_precision: Precision of the embedding and output head (default: ``precision``).
        imbalance: Busiest expert's load over the mean (1: balanced routing).
        intervals: Add 90% intervals (``prefill_ms_ci90``, ``decode_tokens_per_s_ci90``) from
            the backend's calibration; default: for one ArchSpec on a calibrated backend.
        n_samples: Draws behind those intervals.
        scheme: A precision scheme: each part's bytes, dequantisation and compute peak follow
            its format, and ``precision`` only labels the prediction.
    """
    if scheme is None:
        accounting.check_precision(precision)
    device = device.for_backend(backend) if backend is not None else device
    context = _check_tokens(prompt_tokens, context_tokens)
    _check_imbalance(imbalance)
    options = {"embedding_precision": embedding_precision, "imbalance": imbalance, "scheme": scheme}
    prefill_s = forward_seconds(shape, device, precision, prompt_tokens, 0, kv_precision, **options)
    decode_s = forward_seconds(shape, device, precision, 1, context, kv_precision, **options)
    memory = peak_memory_bytes(
        shape,
        device,
        precision,
        np.maximum(context, prompt_tokens),
        prompt_tokens,
        kv_precision,
        embedding_precision,
        scheme=scheme,
    )
    prediction = {
        "device": device.name,
        "backend": device.backend,
        "precision": precision,
        **({"scheme": scheme.name} if scheme is not None else {}),
        "prompt_tokens": prompt_tokens,
        "context_tokens": context,
        **memory,
        "usable_memory_bytes": device.usable_bytes,
        "fits_in_memory": memory["peak_memory_bytes"] <= device.usable_bytes,
        "prefill_ms": prefill_s * 1e3,
        "decode_ms_per_token": decode_s * 1e3,
        "decode_tokens_per_s": 1.0 / decode_s,
        "active_flops_per_token": accounting.forward_flops_per_token(shape, context),
        "total_params": accounting.total_params(shape),
        "active_params": accounting.active_params(shape),
        "calibrated": has_uncertainty(device),
    }
    if intervals is None:
        intervals = isinstance(shape, ArchSpec) and has_uncertainty(device)
    if intervals:
        samples = latency_samples(
            shape, device, precision=precision, prompt_tokens=prompt_tokens, context_tokens=context,
            n_samples=n_samples, kv_precision=kv_precision, **options,
        )  # fmt: skip
        prediction.update(_intervals(samples, isinstance(shape, ArchSpec)))
    # one shape: plain Python numbers (the dict passes json.dumps); many shapes: numpy arrays
    return to_json_ready(prediction) if isinstance(shape, ArchSpec) else prediction


def _intervals(samples: dict[str, np.ndarray], single: bool) -> dict[str, Any]:
    """90% intervals of prefill ms and decode tokens/s from latency draws (lists for one shape)."""
    prefill = np.quantile(samples["prefill_ms"], [0.05, 0.95], axis=-1)
    decode = np.quantile(samples["decode_ms"], [0.05, 0.95], axis=-1)
    rates = 1e3 / decode[::-1]
    return {
        "prefill_ms_ci90": [float(v[0]) for v in prefill] if single else prefill.T,
        "decode_tokens_per_s_ci90": [float(v[0]) for v in rates] if single else rates.T,
    }


def _as_arrays(shapes: Shape) -> ArchArrays:
    return ArchArrays.from_specs([shapes]) if isinstance(shapes, ArchSpec) else shapes


def _column(value: Any, rows: slice | None = None) -> Any:
    """A per-shape value as a column (n, 1); a scalar stays a scalar."""
    array = np.asarray(value)
    if array.ndim == 0:
        return value
    array = array if rows is None else array[rows]
    return array[:, None]


def latency_samples(
    shapes: Shape,
    device: DeviceProfile,
    backend: str | None = None,
    precision: str = "int4",
    prompt_tokens: Any = 512,
    context_tokens: Any = None,
    n_samples: int = 200,
    seed: int = 0,
    kv_precision: str = "fp16",
    embedding_precision: str | None = None,
    imbalance: Any = 1.0,
    block_elements: int = 2_000_000,
    scheme: Scheme | None = None,
) -> dict[str, np.ndarray]:
    """Draws of prefill and per-token decode latency for many shapes at once.

    Returns ``prefill_ms`` and ``decode_ms``, each of shape (n_shapes, n_samples). Column j uses
    the j-th draw of the backend's fitted terms for every shape, times a per-shape predictive
    error (see :mod:`search.device.uncertainty`). On a backend without calibration every
    column is the deterministic prediction (a read-only broadcast view).

    Args:
        shapes: One ArchSpec or ArchArrays.
        device: The device profile; ``backend`` selects its backend (``None``: the profile's).
        precision, prompt_tokens, context_tokens, kv_precision, embedding_precision, imbalance:
            As in :func:`predict`; token counts may be per-shape arrays.
        n_samples: Draws per shape.
        seed: Seed of the draws (the same seed gives the same samples).
        block_elements: Shapes are processed in blocks of about this many (shape, draw) cells.
        scheme: A precision scheme priced part by part (``precision`` is then a label).
    """
    if scheme is None:
        accounting.check_precision(precision)
    if n_samples < 1:
        raise UserError("n_samples must be >= 1")
    device = device.for_backend(backend) if backend is not None else device
    context = _check_tokens(prompt_tokens, context_tokens)
    _check_imbalance(imbalance)
    arrays = _as_arrays(shapes)
    options = {"embedding_precision": embedding_precision, "imbalance": imbalance, "scheme": scheme}
    if not has_uncertainty(device):
        prefill = forward_seconds(arrays, device, precision, prompt_tokens, 0, kv_precision, **options) * 1e3
        decode = forward_seconds(arrays, device, precision, 1, context, kv_precision, **options) * 1e3
        shape = (len(arrays), n_samples)
        return {
            "prefill_ms": np.broadcast_to(np.broadcast_to(prefill, (len(arrays),))[:, None], shape),
            "decode_ms": np.broadcast_to(np.broadcast_to(decode, (len(arrays),))[:, None], shape),
        }
    rng = np.random.default_rng(seed)
    draws = parameter_draws(device, n_samples, rng)
    values = {**device.values, **{key: draw[None, :] for key, draw in draws.items()}}
    prefill_sd, decode_sd = log_sds(device)
    count = len(arrays)
    prefill, decode = np.empty((count, n_samples)), np.empty((count, n_samples))
    step = max(1, block_elements // n_samples)
    for start in range(0, count, step):
        rows = slice(start, min(start + step, count))
        block = ArchArrays(**{f.name: getattr(arrays, f.name)[rows][:, None] for f in fields(ArchArrays)})
        prompt, cached = _column(prompt_tokens, rows), _column(context, rows)
        skew = _column(imbalance, rows)
        common = (kv_precision, embedding_precision, accounting.DEFAULT_GROUP_SIZE, skew, scheme)
        prefill_s = sum(forward_terms(block, values, precision, prompt, 0, *common).values())
        decode_s = sum(forward_terms(block, values, precision, 1, cached, *common).values())
        size = (rows.stop - rows.start, n_samples)
        prefill[rows] = np.broadcast_to(prefill_s, size) * 1e3 * np.exp(prefill_sd * rng.standard_normal(size))
        decode[rows] = np.broadcast_to(decode_s, size) * 1e3 * np.exp(decode_sd * rng.standard_normal(size))
    return {"prefill_ms": prefill, "decode_ms": decode}


def to_json_ready(prediction: dict[str, Any]) -> dict[str, Any]:
    """Scalars as plain Python numbers for one shape's prediction."""
    ready = {}
    for key, value in prediction.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and key.endswith("_bytes"):
            value = int(round(value))
        ready[key] = value
    return ready
