"""Write any shape as a llama.cpp GGUF file with the ``gguf`` package, and its manifest beside it.

Random weights (for speed measurements: a runtime's speed does not depend on their values)
are drawn directly in the target format: quantised blocks get random codes and one fixed
scale, so a 2e9-parameter q4_0 file takes seconds, not a Python quantiser's minutes. Trained
weights (:mod:`scaling.proxy.gguf_weights` reads them from a proxy) go through the
``gguf`` package's own quantiser, exactly as given at f32.

Tensor names and orientations are llama.cpp's (``gguf.TENSOR_NAMES``): a numpy array's last
axis is ggml's first (``ne[0]``), so a linear layer is stored as PyTorch's ``(out, in)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scaling.errors import UserError
from scaling.export.llama_arch import ArchChoice, bailing_shared_count, choose_arch, shared_width
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec

MANIFEST_FORMAT = "moeplan-gguf-manifest/1"
EXPORT_TYPES = ("f32", "f16", "q8_0", "q4_0")
# Types llama.cpp knows that the gguf package's writer cannot produce (it dequantises them only).
UNSUPPORTED_TYPES = ("q4_k", "q4_k_m", "q4_k_s", "q5_k", "q6_k", "q2_k", "q3_k")
CONTEXT_LENGTH = 4096
INIT_STD = 0.02
# llama.cpp keeps the router in f32 when it quantises a model (llama-quant.cpp): so do we.
UNQUANTISED = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")


def check_type(name: str) -> str:
    """A type this writer produces, by its lower-case llama.cpp name."""
    lowered = name.lower()
    if lowered in EXPORT_TYPES:
        return lowered
    if lowered in UNSUPPORTED_TYPES:
        raise UserError(
            f"--type {name}: the gguf package's writer has no {name} quantiser (it only reads it); "
            f"export at one of {', '.join(EXPORT_TYPES)}, or requantise the f16 file with llama-quantize"
        )
    raise UserError(f"--type {name} is not a type this writer produces; choose one of {', '.join(EXPORT_TYPES)}")


def _qtype(type_name: str) -> Any:
    import gguf

    return getattr(gguf.GGMLQuantizationType, type_name.upper())


@dataclass
class ExportResult:
    """What :func:`write_gguf` wrote: the file, its manifest and the manifest's contents."""

    path: Path
    manifest_path: Path
    manifest: dict[str, Any] = field(default_factory=dict)


def tensor_shapes(spec: ArchSpec, choice: ArchChoice) -> dict[str, tuple[int, ...]]:
    """Every tensor of the GGUF file and its numpy shape (ggml's ``ne`` reversed)."""
    d, v = spec.d_model, spec.vocab_size
    q_width, kv_width = spec.n_heads * spec.head_dim, spec.n_kv_heads * spec.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (v, d), "output_norm.weight": (d,)}
    if not (spec.tie_embeddings and choice.name in ("llama", "qwen2", "qwen3")):
        shapes["output.weight"] = (v, d)  # archs that need it get a copy of the tied embedding
    for i in range(spec.n_layers):
        block = f"blk.{i}."
        shapes[block + "attn_norm.weight"] = (d,)
        shapes[block + "attn_q.weight"] = (q_width, d)
        shapes[block + "attn_k.weight"] = (kv_width, d)
        shapes[block + "attn_v.weight"] = (kv_width, d)
        if spec.qkv_bias:
            shapes.update({block + "attn_q.bias": (q_width,), block + "attn_k.bias": (kv_width,)})
            shapes[block + "attn_v.bias"] = (kv_width,)
        if spec.qk_norm:
            shapes[block + "attn_q_norm.weight"] = (spec.head_dim,)
            shapes[block + "attn_k_norm.weight"] = (spec.head_dim,)
        shapes[block + "attn_output.weight"] = (d, q_width)
        shapes[block + "ffn_norm.weight"] = (d,)
        if not spec.is_moe_layer(i):
            shapes.update({block + "ffn_gate.weight": (spec.d_ff, d), block + "ffn_up.weight": (spec.d_ff, d)})
            shapes[block + "ffn_down.weight"] = (d, spec.d_ff)
            continue
        experts, width = spec.n_routed_experts, spec.expert_d_ff
        shapes[block + "ffn_gate_inp.weight"] = (experts, d)
        shapes[block + "ffn_gate_exps.weight"] = (experts, width, d)
        shapes[block + "ffn_up_exps.weight"] = (experts, width, d)
        shapes[block + "ffn_down_exps.weight"] = (experts, d, width)
        if spec.n_shared_experts:
            shared = width * bailing_shared_count(spec) if choice.name == "bailingmoe" else shared_width(spec)
            shapes[block + "ffn_gate_shexp.weight"] = (shared, d)
            shapes[block + "ffn_up_shexp.weight"] = (shared, d)
            shapes[block + "ffn_down_shexp.weight"] = (d, shared)
            if choice.name == "qwen2moe":
                shapes[block + "ffn_gate_inp_shexp.weight"] = (d,)
    return shapes


def _tensor_type(name: str, shape: tuple[int, ...], type_name: str) -> str:
    """The type one tensor is stored at: 1-D and router tensors stay f32; rows a block does not
    divide fall back to f16 (as llama-quantize does)."""
    if len(shape) == 1 or name.endswith(UNQUANTISED) or type_name == "f32":
        return "f32"
    if type_name in ("q8_0", "q4_0") and shape[-1] % 32:
        return "f16"
    return type_name


def _random_tensor(name: str, shape: tuple[int, ...], type_name: str, rng: np.random.Generator) -> np.ndarray:
    """Random weights already in ``type_name``: norms are ones, quantised blocks random codes."""
    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32) if name.endswith("norm.weight") else np.zeros(shape, np.float32)
    if type_name in ("f32", "f16"):
        dtype = np.float32 if type_name == "f32" else np.float16
        return (INIT_STD * rng.standard_normal(shape, dtype=np.float32)).astype(dtype, copy=False)
    import gguf

    qtype = _qtype(type_name)
    block_size, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    codes = rng.integers(0, 256, size=gguf.quant_shape_to_byte_shape(shape, qtype), dtype=np.uint8)
    blocks = codes.reshape(*shape[:-1], shape[-1] // block_size, block_bytes)
    scale = np.float16(INIT_STD / (127 if type_name == "q8_0" else 8))  # codes span about one std
    blocks[..., :2] = np.frombuffer(scale.tobytes(), dtype=np.uint8)
    return codes


def _neox_order(head_dim: int) -> np.ndarray:
    """Rows of one head from consecutive pairs (2j, 2j+1) to split halves (j, j + head_dim/2)."""
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def _to_neox(name: str, array: np.ndarray, spec: ArchSpec) -> np.ndarray:
    """Permute q and k (weights, biases, norms) per head for an architecture with NEOX RoPE.

    q . k is unchanged by the same permutation of both, and the pair (2j, 2j+1) the proxy
    rotates by angle j lands on (j, j + d/2), the pair NEOX rotates by angle j."""
    order = _neox_order(spec.head_dim)
    if name.endswith(("attn_q_norm.weight", "attn_k_norm.weight")):
        return array[order]
    if not name.endswith(("attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias")):
        return array
    heads = array.shape[0] // spec.head_dim
    return array.reshape(heads, spec.head_dim, *array.shape[1:])[:, order].reshape(array.shape)


def _trained_tensors(
    spec: ArchSpec, choice: ArchChoice, shapes: dict[str, tuple[int, ...]], weights: dict[str, np.ndarray]
) -> Iterator[tuple[str, np.ndarray]]:
    for name, shape in shapes.items():
        if name == "output.weight" and name not in weights:
            array = weights["token_embd.weight"]  # a tied embedding, copied for an arch that needs a head
        elif name not in weights:
            raise UserError(f"the proxy's weights lack tensor {name!r} that llama.cpp's {choice.name} needs")
        else:
            array = weights[name]
        array = np.asarray(array, dtype=np.float32)
        if array.shape != shape:
            raise UserError(f"tensor {name!r} has shape {array.shape}, the shape needs {shape}")
        yield name, (_to_neox(name, array, spec) if choice.neox_rope else array)


def _add_metadata(writer: Any, spec: ArchSpec, choice: ArchChoice, file_type: str) -> None:
    import gguf

    writer.add_name(spec.name or "moeplan-shape")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(spec.d_model)
    writer.add_block_count(spec.n_layers)
    # llama (Mixtral) sizes its experts by feed_forward_length; every layer is MoE there
    writer.add_feed_forward_length(spec.expert_d_ff if spec.is_moe else spec.d_ff)
    writer.add_head_count(spec.n_heads)
    writer.add_head_count_kv(spec.n_kv_heads)
    writer.add_key_length(spec.head_dim)
    writer.add_value_length(spec.head_dim)
    writer.add_rope_dimension_count(spec.head_dim)
    writer.add_rope_freq_base(float(spec.rope_theta))
    writer.add_layer_norm_rms_eps(float(spec.norm_eps))
    writer.add_vocab_size(spec.vocab_size)
    writer.add_file_type(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        }[file_type]
    )
    if spec.is_moe:
        writer.add_expert_count(spec.n_routed_experts)
        writer.add_expert_used_count(spec.routed_top_k)
        writer.add_expert_feed_forward_length(spec.expert_d_ff)
        if spec.n_shared_experts:
            writer.add_expert_shared_feed_forward_length(
                spec.expert_d_ff * bailing_shared_count(spec) if choice.name == "bailingmoe" else shared_width(spec)
            )
        if choice.name == "bailingmoe":
            writer.add_expert_shared_count(bailing_shared_count(spec))
            writer.add_expert_weights_norm(bool(spec.router_renorm and spec.routed_top_k > 1))
    # A byte-level model has no vocabulary: llama.cpp runs it on token ids alone.
    writer.add_tokenizer_model("no_vocab")


def write_gguf(
    spec: ArchSpec,
    path: str | Path,
    type_name: str = "f32",
    weights: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    source: str | None = None,
) -> ExportResult:
    """Write ``spec`` to ``path`` (random weights unless ``weights``), then ``path``.json beside it.

    Args:
        weights: Trained weights by GGUF tensor name (``scaling.proxy.gguf_weights``), in the
            proxy's RoPE layout; None draws random ones from ``seed``.
        source: Where trained weights came from (a checkpoint), for the manifest.
    """
    import gguf

    type_name = check_type(type_name)
    choice = choose_arch(spec)
    path = Path(path)
    shapes = tensor_shapes(spec, choice)
    writer = gguf.GGUFWriter(str(path), choice.name)
    _add_metadata(writer, spec, choice, type_name)
    rng = np.random.default_rng(seed)
    types: dict[str, int] = {}
    n_params = 0
    tensors = (
        _trained_tensors(spec, choice, shapes, weights) if weights is not None else ((name, None) for name in shapes)
    )
    for name, array in tensors:
        shape = shapes[name]
        stored = _tensor_type(name, shape, type_name)
        if array is None:
            data = _random_tensor(name, shape, stored, rng)
        else:
            data = gguf.quants.quantize(array, _qtype(stored))
        if stored in ("q8_0", "q4_0"):
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=_qtype(stored))
        else:
            writer.add_tensor(name, data)
        types[stored] = types.get(stored, 0) + 1
        n_params += int(np.prod(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    manifest = _manifest(spec, choice, path, type_name, types, n_params, weights is None, seed, source)
    manifest_path = path.with_name(path.name + ".json")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return ExportResult(path, manifest_path, manifest)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(
    spec: ArchSpec,
    choice: ArchChoice,
    path: Path,
    type_name: str,
    types: dict[str, int],
    n_params: int,
    random: bool,
    seed: int,
    source: str | None,
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "file": path.name,
        "sha256": file_sha256(path),
        "file_bytes": path.stat().st_size,
        "type": type_name,
        "tensor_types": types,
        "gguf_n_params": n_params,
        "llama_arch": choice.name,
        "exact": choice.exact,
        "notes": list(choice.notes),
        "weights": "random" if random else "trained",
        "seed": seed if random else None,
        "source": source,
        "precision": {"f32": "fp32", "f16": "fp16", "q8_0": "int8", "q4_0": "int4"}[type_name],
        "arch": spec.to_dict(),
        "accounting": accounting.summary(spec, "fp32"),
    }


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A manifest written by :func:`write_gguf` (``OUT.gguf.json``), checked for its format."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read manifest {str(path)!r}: {error}") from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{str(path)!r} is not a moeplan GGUF manifest (format {MANIFEST_FORMAT})")
    return document
