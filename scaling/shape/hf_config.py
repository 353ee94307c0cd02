"""Hugging Face ``config.json`` import and export for decoder-only models.

Hugging Face configs describe physical experts, so an imported MoE has ``granularity=1``
with ``n_experts`` and ``top_k`` equal to the config's expert counts. Export writes the
physical counts (E*G experts, top_k*G selected, width moe_d_ff/G).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scaling.checks import LIMITS, check_number, read_text_file
from scaling.errors import UserError
from scaling.shape.arch import ArchError, ArchSpec

SUPPORTED_MODEL_TYPES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "olmoe",
    "granitemoe",
)


def load_hf_config(path: str | Path) -> ArchSpec:
    """Read a Hugging Face ``config.json`` file into an :class:`ArchSpec`."""
    text = read_text_file(path, "Hugging Face config", "a config.json file")
    path = Path(path)
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArchError(f"cannot parse {str(path)!r} as JSON: {error}") from None
    return from_hf_config(config, name=path.parent.name if path.name == "config.json" else path.stem)


def from_hf_config(config: dict[str, Any], name: str = "") -> ArchSpec:
    """Translate a Hugging Face config mapping, handling each model type's quirks."""
    if not isinstance(config, dict):
        raise ArchError("a Hugging Face config must be a JSON object")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ArchError(f"unsupported model_type {_short(model_type)}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")

    read = _Reader(config, model_type)
    n_heads = read.int("num_attention_heads", "n_heads")
    hidden = read.int("hidden_size", "d_model")
    n_kv_heads = read.int("num_key_value_heads", "n_kv_heads", default=n_heads)
    fields: dict[str, Any] = {
        "name": name or _text(config.get("_name_or_path")) or model_type,
        "vocab_size": read.int("vocab_size", "vocab_size"),
        "d_model": hidden,
        "n_layers": read.int("num_hidden_layers", "n_layers"),
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "head_dim": read.int("head_dim", "head_dim", default=None) or _head_dim(model_type, hidden, n_heads),
        "tie_embeddings": read.bool("tie_word_embeddings", model_type == "granitemoe"),
        "rope_theta": read.float("rope_theta", "rope_theta", 10000.0),
        "norm_eps": read.float("rms_norm_eps", "norm_eps", 1e-6),
    }
    if config.get("mlp_bias"):
        raise ArchError(f"{model_type} config sets mlp_bias=true, which moeplan does not model")
    if model_type in ("llama", "mistral", "mixtral", "granitemoe", "olmoe") and config.get("attention_bias"):
        raise ArchError(
            f"{model_type} config sets attention_bias=true (biases on q, k, v and o), "
            "which moeplan does not model; only qkv biases (qwen2) are supported"
        )
    # Qwen2 always has qkv biases; an explicit "qkv_bias" key (written by our export) wins.
    fields["qkv_bias"] = (model_type in ("qwen2", "qwen2_moe") and bool(config.get("qkv_bias", True))) or (
        model_type in ("qwen3", "qwen3_moe") and bool(config.get("attention_bias"))
    )
    fields["qk_norm"] = model_type in ("qwen3", "qwen3_moe", "olmoe")

    if model_type in ("llama", "mistral", "qwen2", "qwen3"):
        fields["d_ff"] = read.int("intermediate_size", "d_ff", minimum=0)
        return ArchSpec.from_dict(fields)

    # --- MoE types -----------------------------------------------------------------------
    top_k = read.int("num_experts_per_tok", "top_k")
    if model_type in ("mixtral", "granitemoe"):
        n_experts = read.int("num_local_experts", "n_experts")
        expert_width = read.int("intermediate_size", "moe_d_ff", minimum=0)
        fields["d_ff"] = expert_width
        # softmax over the top-k logits; over one logit it is 1 (no router gradient), which
        # ArchSpec refuses to call renormalisation
        fields["router_renorm"] = top_k > 1
    elif model_type == "olmoe":
        n_experts = read.int("num_experts", "n_experts")
        expert_width = read.int("intermediate_size", "moe_d_ff", minimum=0)
        fields["d_ff"] = expert_width
        fields["router_renorm"] = read.bool("norm_topk_prob", False) and top_k > 1
    else:  # qwen2_moe, qwen3_moe
        n_experts = read.int("num_experts", "n_experts")
        expert_width = read.int("moe_intermediate_size", "moe_d_ff", minimum=0)
        fields["d_ff"] = read.int("intermediate_size", "d_ff", default=0, minimum=0) or expert_width
        fields["router_renorm"] = read.bool("norm_topk_prob", False) and top_k > 1
        fields["moe_layer_step"] = read.int("decoder_sparse_step", "moe_layer_step", default=None) or 1
        fields["first_dense_layers"] = _dense_prefix(read.int_list("mlp_only_layers", "n_layers"), model_type)
        shared_width = read.int("shared_expert_intermediate_size", "shared_expert_d_ff", default=0, minimum=0)
        if model_type == "qwen2_moe" and shared_width:
            fields["n_shared_experts"] = 1
            fields["shared_expert_d_ff"] = shared_width
            fields["shared_expert_gate"] = read.bool("shared_expert_gate", True)
    if "first_k_dense_replace" in config:
        fields["first_dense_layers"] = read.int("first_k_dense_replace", "first_dense_layers", minimum=0)
    fields.update(
        n_experts=n_experts,
        top_k=top_k,
        moe_d_ff=expert_width,
        granularity=1,
    )
    return ArchSpec.from_dict(fields)


_MISSING = object()


def _head_dim(model_type: str, hidden: int, n_heads: int) -> int:
    """hidden_size / num_attention_heads, when the config gives no head_dim."""
    if hidden % n_heads:
        raise ArchError(
            f"{model_type} config: num_attention_heads={n_heads} does not divide hidden_size={hidden} "
            "and head_dim is not given; set head_dim"
        )
    return hidden // n_heads


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class _Reader:
    """Typed reads of a config's fields: strict integers (``true`` is not 1, ``"2"`` is not 2),
    finite floats and real booleans, each error naming the config's key."""

    def __init__(self, config: dict[str, Any], model_type: str) -> None:
        self.config, self.model_type = config, model_type
        self._check_flags()

    def _value(self, key: str, default: Any) -> Any:
        value = self.config.get(key)
        if value is None:
            if default is _MISSING:
                raise ArchError(f"{self.model_type} config is missing the field {key!r}")
            return default
        return value

    def int(self, key: str, limit: str, default: Any = _MISSING, minimum: int = 1) -> Any:
        value = self._value(key, default)
        if value is default and default is not _MISSING:
            return value
        return self._checked(value, key, integer=True, minimum=minimum, maximum=LIMITS.get(limit))

    def float(self, key: str, limit: str, default: float) -> float:
        value = self._value(key, default)
        return float(self._checked(value, key, above=0, maximum=LIMITS.get(limit)))

    def bool(self, key: str, default: bool) -> bool:
        value = self._value(key, default)
        if not isinstance(value, bool):
            raise ArchError(f"{self.model_type} config: {key} must be true or false, got {_short(value)}")
        return value

    def int_list(self, key: str, limit: str) -> list[int]:
        value = self._value(key, [])
        if not isinstance(value, list) or len(value) > LIMITS[limit]:
            raise ArchError(f"{self.model_type} config: {key} must be a list of layer indices, got {_short(value)}")
        bounds = {"integer": True, "minimum": 0, "maximum": LIMITS[limit]}
        return [self._checked(v, f"{key}[{i}]", **bounds) for i, v in enumerate(value)]

    def _checked(self, value: Any, key: str, **bounds: Any) -> Any:
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                kind = "an integer" if bounds.get("integer") else "a number"
                raise UserError(f"{key} must be {kind}, got {_short(value)}")
            return check_number(value, key, **bounds)
        except UserError as error:
            raise ArchError(f"{self.model_type} config: {error}") from None

    def _check_flags(self) -> None:
        for key in ("mlp_bias", "attention_bias", "qkv_bias"):
            self.bool(key, False)


def _short(value: Any) -> str:
    """A value for a message, cut short (a config may hold a megabyte string)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _dense_prefix(layers: list[int], model_type: str) -> int:
    """``mlp_only_layers`` as a count of leading dense layers (the only layout modelled)."""
    ordered = sorted(layers)
    if ordered != list(range(len(ordered))):
        raise ArchError(
            f"{model_type} mlp_only_layers={layers} is not a prefix 0..n-1; "
            "moeplan models dense layers only at the start (first_dense_layers)"
        )
    return len(ordered)


def to_hf_config(spec: ArchSpec) -> dict[str, Any]:
    """Write a shape as a Hugging Face-style config of the closest supported model type.

    Dense shapes become llama (qwen2 with qkv biases, qwen3 with qk-norm). MoE shapes with
    shared experts become qwen2_moe (n shared experts of width w are exactly one of width
    n*w); with qk-norm, qwen3_moe; otherwise mixtral.
    """
    common: dict[str, Any] = {
        "architectures": None,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.n_layers,
        "num_attention_heads": spec.n_heads,
        "num_key_value_heads": spec.n_kv_heads,
        "head_dim": spec.head_dim,
        "tie_word_embeddings": spec.tie_embeddings,
        "rope_theta": spec.rope_theta,
        "rms_norm_eps": spec.norm_eps,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    }
    if not spec.is_moe:
        model_type = "qwen3" if spec.qk_norm else "qwen2" if spec.qkv_bias else "llama"
        config = {"model_type": model_type, "intermediate_size": spec.d_ff, **common}
    elif spec.n_shared_experts or spec.qkv_bias:
        model_type = "qwen2_moe"
        config = {
            "model_type": model_type,
            "intermediate_size": spec.d_ff or spec.expert_d_ff,
            "moe_intermediate_size": spec.expert_d_ff,
            "shared_expert_intermediate_size": spec.n_shared_experts * spec.shared_expert_d_ff,
            "num_experts": spec.n_routed_experts,
            "num_experts_per_tok": spec.routed_top_k,
            "norm_topk_prob": spec.router_renorm,
            "decoder_sparse_step": spec.moe_layer_step,
            "mlp_only_layers": list(range(spec.first_dense_layers)),
            "qkv_bias": spec.qkv_bias,
            "shared_expert_gate": spec.shared_expert_gate,
            **common,
        }
    elif spec.qk_norm or spec.moe_layer_step > 1 or spec.first_dense_layers:
        model_type = "qwen3_moe"
        config = {
            "model_type": model_type,
            "intermediate_size": spec.d_ff or spec.expert_d_ff,
            "moe_intermediate_size": spec.expert_d_ff,
            "num_experts": spec.n_routed_experts,
            "num_experts_per_tok": spec.routed_top_k,
            "norm_topk_prob": spec.router_renorm,
            "decoder_sparse_step": spec.moe_layer_step,
            "mlp_only_layers": list(range(spec.first_dense_layers)),
            **common,
        }
    else:
        model_type = "mixtral"
        config = {
            "model_type": model_type,
            "intermediate_size": spec.expert_d_ff,
            "num_local_experts": spec.n_routed_experts,
            "num_experts_per_tok": spec.routed_top_k,
            **common,
        }
    config["architectures"] = [_ARCHITECTURE_CLASS[model_type]]
    return config


_ARCHITECTURE_CLASS = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
}
