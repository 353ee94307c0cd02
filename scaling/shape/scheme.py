"""Deployment precision schemes: how each part of a model is stored on the device.

A scheme gives every part of a model (embedding, attention, dense MLP, router, routed experts,
shared experts, output head) a format from a small menu: integer weights at 8, 4 or 3 bits
with one fp16 scale per group of 32, 64 or 128 weights (and, when asymmetric, a uint8 zero
point per group), or an unquantised bf16/fp16 passthrough. Groups run along a matrix's input
dimension, so a group must divide every input width of its part.

A scheme file (TOML)::

    name = "int4-experts-int8-rest"   # optional; default: the file's stem
    [default]                         # every part not given its own table (default: bf16)
    bits = 8                          # 8, 4 or 3; or "bf16" / "fp16" (unquantised)
    group_size = 32                   # 32, 64 or 128
    symmetric = true                  # false: a scale and a zero point per group
    [routed_experts]                  # any part: its fields override [default]
    bits = 4

With tied embeddings the one shared matrix takes the ``embedding`` format. Norm weights and
biases always stay at fp16, as in :func:`scaling.shape.accounting.weight_bytes`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from scaling.errors import UserError
from scaling.shape.arch import ArchSpec

PARTS = ("embedding", "attention", "dense_mlp", "router", "routed_experts", "shared_experts", "output_head")
MLP_PARTS = ("dense_mlp", "routed_experts", "shared_experts")
BITS_MENU = (8, 4, 3)
GROUP_MENU = (32, 64, 128)
PASSTHROUGH = ("bf16", "fp16")
METHODS = ("rtn", "gptq")  # round to nearest; GPTQ (scaling.proxy.gptq)
SCALE_BYTES = 2  # one fp16 scale per group
ZERO_BYTES = 1  # one uint8 zero point per group (asymmetric formats)
PART_KEYS = ("bits", "group_size", "symmetric")
TOP_KEYS = ("name", "description", "default", *PARTS)


@dataclass(frozen=True)
class PartFormat:
    """How one part's matrices are stored: ``bits`` 8/4/3 with a group size, or 16 (passthrough).

    Args:
        bits: 8, 4 or 3 for integer weights; 16 for a passthrough.
        group_size: Weights per scale along the input dimension (0 for a passthrough).
        symmetric: Integer codes centred on zero (a scale per group); False adds a zero point.
        dtype: ``bf16`` or ``fp16`` for a passthrough, ``int`` otherwise.
    """

    bits: int
    group_size: int = 0
    symmetric: bool = True
    dtype: str = "int"

    @property
    def quantised(self) -> bool:
        return self.dtype == "int"

    @property
    def bytes_per_group(self) -> int:
        """Scale (and zero point) bytes stored once per group."""
        return SCALE_BYTES + (0 if self.symmetric else ZERO_BYTES)

    def bytes_per_weight(self) -> float:
        """Bytes of one matrix weight, its share of the group's scale included."""
        if not self.quantised:
            return 2.0
        return self.bits / 8 + self.bytes_per_group / self.group_size

    @property
    def label(self) -> str:
        """``int4-g32``, ``int4-g32-asym`` or ``bf16``."""
        if not self.quantised:
            return self.dtype
        return f"int{self.bits}-g{self.group_size}" + ("" if self.symmetric else "-asym")

    def to_dict(self) -> dict[str, Any]:
        if not self.quantised:
            return {"bits": self.dtype}
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}


BF16 = PartFormat(bits=16, dtype="bf16")


@dataclass(frozen=True)
class Scheme:
    """A format for every part of :data:`PARTS` (``formats`` in that order)."""

    name: str
    formats: tuple[PartFormat, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.formats) != len(PARTS):
            raise ValueError(f"a scheme needs one format per part ({len(PARTS)}), got {len(self.formats)}")

    def format(self, part: str) -> PartFormat:
        if part not in PARTS:
            raise UserError(f"unknown part {part!r}; parts: {', '.join(PARTS)}")
        return self.formats[PARTS.index(part)]

    @property
    def parts(self) -> dict[str, PartFormat]:
        return dict(zip(PARTS, self.formats, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """Every part's format (a scheme file with no [default] that reads back the same)."""
        return {"name": self.name, **{part: fmt.to_dict() for part, fmt in self.parts.items()}}

    @property
    def key(self) -> str:
        """A hash of the formats alone: equal schemes under two names share it."""
        formats = {part: fmt.to_dict() for part, fmt in self.parts.items()}
        return hashlib.sha256(json.dumps(formats, sort_keys=True).encode()).hexdigest()[:16]

    def quantised_parts(self, arch: ArchSpec | None = None) -> list[str]:
        """Parts stored as integers (among those ``arch`` has, when given)."""
        present = PARTS if arch is None else present_parts(arch)
        return [part for part in present if self.format(part).quantised]

    def summary(self, arch: ArchSpec | None = None) -> dict[str, Any]:
        """``bits``, ``group_size`` and ``symmetric`` shared by the quantised parts (None when they
        differ) and ``parts``: the quantised parts, or ``all`` when every part present is."""
        quantised = self.quantised_parts(arch)
        formats = {self.format(part) for part in quantised}
        present = PARTS if arch is None else present_parts(arch)
        uniform = next(iter(formats)) if len(formats) == 1 else None
        if not quantised:
            return {"bits": 16, "group_size": None, "symmetric": None, "parts": "none"}
        return {
            "bits": uniform.bits if uniform else None,
            "group_size": uniform.group_size if uniform else None,
            "symmetric": uniform.symmetric if uniform else None,
            "parts": "all" if len(quantised) == len(present) else ",".join(quantised),
        }

    def check(self, arch: ArchSpec, origin: str | None = None) -> Scheme:
        """Refuse a group size that does not divide an input width of its part in ``arch``."""
        for part in present_parts(arch):
            fmt = self.format(part)
            if not fmt.quantised:
                continue
            for what, width in input_widths(arch, part):
                if width % fmt.group_size:
                    fits = [g for g in GROUP_MENU if all(w % g == 0 for _, w in input_widths(arch, part))]
                    hint = f"choose {' or '.join(map(str, fits))}" if fits else "keep this part at bf16"
                    raise UserError(
                        f"scheme {origin or self.name!r}: {part}.group_size = {fmt.group_size} does not divide "
                        f"the {what} ({width}) of shape {arch.name or 'given'!r}; {hint}"
                    )
        return self


def input_widths(arch: ArchSpec, part: str) -> list[tuple[str, int]]:
    """The input widths of a part's matrices (what a group must divide), with their names."""
    d = ("d_model", arch.d_model)
    widths = {
        "embedding": [d],
        "output_head": [d],
        "attention": [d, ("attention output width n_heads*head_dim", arch.n_heads * arch.head_dim)],
        "dense_mlp": [d, ("dense MLP width d_ff", arch.d_ff)],
        "router": [d],
        "routed_experts": [d, ("routed expert width", arch.expert_d_ff)],
        "shared_experts": [d, ("shared expert width", arch.shared_expert_d_ff)],
    }
    return widths[part]


def present_parts(arch: ArchSpec) -> list[str]:
    """The parts ``arch`` has weights in (no head when tied, no experts when dense, ...)."""
    has = {
        "embedding": True,
        "attention": True,
        "dense_mlp": arch.n_dense_layers > 0,
        "router": arch.is_moe,
        "routed_experts": arch.is_moe,
        "shared_experts": arch.is_moe and arch.n_shared_experts > 0,
        "output_head": not arch.tie_embeddings,
    }
    return [part for part in PARTS if has[part]]


# --- reading schemes ----------------------------------------------------------------------------
def _fail(origin: str, path: str, message: str) -> UserError:
    return UserError(f"scheme {origin}: {path}: {message}")


def _part_format(table: Any, base: dict[str, Any], origin: str, path: str) -> PartFormat:
    if not isinstance(table, dict):
        raise _fail(origin, path, "must be a table with bits, group_size and symmetric")
    for key in table:
        if key not in PART_KEYS:
            raise _fail(origin, f"{path}.{key}", f"unknown key; allowed: {', '.join(PART_KEYS)}")
    fields = {**base, **table}
    bits = fields.get("bits", "bf16")
    if bits in PASSTHROUGH:
        return PartFormat(bits=16, dtype=bits)
    menu = ", ".join([*map(str, BITS_MENU), *(f'"{p}"' for p in PASSTHROUGH)])
    if isinstance(bits, bool) or bits not in BITS_MENU:
        raise _fail(origin, f"{path}.bits", f"{bits!r} is not in the menu; choose {menu}")
    group = fields.get("group_size", 32)
    if isinstance(group, bool) or group not in GROUP_MENU:
        raise _fail(
            origin, f"{path}.group_size", f"{group!r} is not in the menu; choose {', '.join(map(str, GROUP_MENU))}"
        )
    symmetric = fields.get("symmetric", True)
    if not isinstance(symmetric, bool):
        raise _fail(origin, f"{path}.symmetric", f"must be true or false, got {symmetric!r}")
    return PartFormat(bits=bits, group_size=group, symmetric=symmetric)


def parse_scheme(document: dict[str, Any], origin: str, default_name: str = "") -> Scheme:
    """A scheme from a parsed TOML document; errors name the field."""
    if not isinstance(document, dict):
        raise UserError(f"scheme {origin}: must be a table")
    for key in document:
        if key not in TOP_KEYS:
            raise _fail(origin, key, f"unknown part; parts: {', '.join(PARTS)} (and [default], name, description)")
    name = document.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise _fail(origin, "name", "must be a non-empty string")
    default = document.get("default", {})
    if not isinstance(default, dict):
        raise _fail(origin, "default", "must be a table with bits, group_size and symmetric")
    _part_format(default, {}, origin, "default")  # errors name [default] itself
    formats = tuple(_part_format(document.get(part, {}), default, origin, part) for part in PARTS)
    return Scheme(name=name, formats=formats, description=str(document.get("description", "")))


def uniform(name: str, fmt: PartFormat, parts: tuple[str, ...] = PARTS, description: str = "") -> Scheme:
    """``fmt`` for ``parts``, bf16 for the rest."""
    return Scheme(name, tuple(fmt if part in parts else BF16 for part in PARTS), description)


def _builtins() -> dict[str, Scheme]:
    schemes = {
        "bf16": uniform("bf16", BF16, description="unquantised bf16 (the reference)"),
        "fp16": uniform("fp16", PartFormat(bits=16, dtype="fp16"), description="unquantised fp16"),
    }
    for bits in BITS_MENU:
        for group in GROUP_MENU:
            for symmetric in (True, False):
                fmt = PartFormat(bits, group, symmetric)
                schemes[fmt.label] = uniform(fmt.label, fmt, description=f"every matrix at {fmt.label}")
        fmt = PartFormat(bits, 32)
        schemes[f"{fmt.label}-mlp"] = uniform(
            f"{fmt.label}-mlp", fmt, MLP_PARTS, f"MLP weights (dense, routed, shared) at {fmt.label}, the rest bf16"
        )
    schemes["int8"] = uniform("int8", PartFormat(8, 32), description="every matrix at int8-g32")
    int8, int4 = PartFormat(8, 32), PartFormat(4, 32)
    schemes["int4-experts-int8-rest"] = Scheme(
        "int4-experts-int8-rest",
        tuple(int4 if part == "routed_experts" else int8 for part in PARTS),
        "routed experts at int4-g32, everything else at int8-g32",
    )
    schemes["int4-g32-int8-embeddings"] = Scheme(
        "int4-g32-int8-embeddings",
        tuple(int8 if part in ("embedding", "output_head") else int4 for part in PARTS),
        "like the published Llama 3.2 phone builds: int4-g32 weights, int8 embedding and output head",
    )
    return schemes


BUILTIN_SCHEMES = _builtins()
# The scheme each single-precision flag means (``int4`` is int4-g32 with fp16 scales, as the
# accounting prices it); fp32 has none: it is no deployment format.
PRECISION_SCHEMES = {"bf16": "bf16", "fp16": "fp16", "int8": "int8", "int4": "int4-g32"}


def scheme_for_precision(precision: str) -> Scheme | None:
    """The built-in scheme a ``--precision`` value stands for (None for fp32)."""
    name = PRECISION_SCHEMES.get(precision)
    return None if name is None else BUILTIN_SCHEMES[name]


def builtin_schemes() -> list[str]:
    return sorted(BUILTIN_SCHEMES)


def load_scheme(name_or_path: str | Path, base: Path | None = None) -> Scheme:
    """A built-in scheme by name, or a scheme TOML file (relative to ``base`` when given)."""
    text = str(name_or_path)
    if text in BUILTIN_SCHEMES:
        return BUILTIN_SCHEMES[text]
    path = Path(text)
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise UserError(
            f"scheme {text!r} is neither a built-in scheme nor a file; give a .toml file or one of "
            f"{', '.join(builtin_schemes())}"
        )
    try:
        document = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"scheme {str(path)!r} is not valid TOML: {error}") from None
    return parse_scheme(document, repr(str(path)), default_name=path.stem)
