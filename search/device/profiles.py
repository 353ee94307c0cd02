"""Device profiles: the hardware facts the cost model needs, each with its source.

Profiles are TOML files. The shipped ones live beside this module (``search/devices/``); a
user's own (and ``host``, written by ``moeplan devices calibrate``) live in
``$MOEPLAN_DEVICES`` or ``~/.cache/moeplan/devices``. ``--device`` takes a name or a path.

Every number is a table ``{value, flag, basis, source}``: ``flag`` is ``spec`` (published,
or derived from published data, before measurement) or ``measured`` (measured or calibrated
on the device); ``basis`` says how (vendor, third-party, derived, assumption, calibrated).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from scaling.errors import UserError

SHIPPED = Path(__file__).resolve().parent / "builtin"
FLAGS = ("spec", "measured")
REQUIRED = (
    "dram_bytes",
    "usable_fraction",
    "bandwidth_bytes_per_s",
    "compute_flops.fp16",
    "efficiency.compute",
    "efficiency.bandwidth",
    "overheads.per_layer_s",
    "overheads.per_forward_s",
    "overheads.runtime_bytes",
    "overheads.dequant_flops_per_weight",
)
OPTIONAL = (
    *(f"compute_flops.{p}" for p in ("fp32", "bf16", "int8", "int4")),
    "efficiency.half_tokens",  # default 0: matmuls at full efficiency whatever the token count
    "overheads.per_expert_s",  # default 0: no fixed cost per touched expert
    "overheads.per_moe_layer_s",  # default 0: routing (softmax, top-k, sort) costs nothing fixed
    "efficiency.expert_compute",  # default 1: routed-expert matmuls as efficient as dense ones
    "efficiency.overlap",  # default 1: arithmetic and memory traffic overlap fully (roofline)
)
# Quantised weights are dequantised to 16-bit for the matmul; fp32 falls back to the fp16 rate.
COMPUTE_FALLBACK = {"bf16": "fp16", "int8": "fp16", "int4": "fp16", "fp32": "fp16"}


def user_devices_dir() -> Path:
    root = os.environ.get("MOEPLAN_DEVICES") or Path.home() / ".cache" / "moeplan" / "devices"
    return Path(root)


@dataclass
class DeviceProfile:
    """A device's numbers (``values``, by dotted key) and their provenance (``facts``)."""

    name: str
    description: str
    backend: str
    values: dict[str, float]
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: str = ""

    def __getitem__(self, key: str) -> float:
        return self.values[key]

    def get(self, key: str, default: float) -> float:
        return self.values.get(key, default)

    @property
    def usable_bytes(self) -> float:
        return self.values["dram_bytes"] * self.values["usable_fraction"]

    def compute_flops(self, precision: str) -> float:
        """Peak FLOP/s for matmuls whose weights are stored at ``precision``."""
        key = f"compute_flops.{precision}"
        if key in self.values:
            return self.values[key]
        return self.values[f"compute_flops.{COMPUTE_FALLBACK.get(precision, 'fp16')}"]

    def with_values(self, name: str, changes: dict[str, float], flag: str, basis: str, source: str) -> DeviceProfile:
        """A copy with some numbers replaced (e.g. by calibration), provenance updated."""
        values, facts = dict(self.values), {k: dict(v) for k, v in self.facts.items()}
        for key, value in changes.items():
            values[key] = float(value)
            facts[key] = {"value": float(value), "flag": flag, "basis": basis, "source": source}
        return DeviceProfile(name, self.description, self.backend, values, facts)

    def to_toml(self) -> str:
        """Serialise in the shipped files' layout."""
        lines = [
            f"name = {_quote(self.name)}",
            f"description = {_quote(self.description)}",
            f"backend = {_quote(self.backend)}",
            "",
        ]
        for key, fact in self.facts.items():
            lines.append(f"[{key}]")
            lines.append(f"value = {fact['value']!r}")
            for item in ("flag", "basis", "source"):
                lines.append(f"{item} = {_quote(str(fact.get(item, '')))}")
            lines.append("")
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "backend": self.backend,
            "dram_bytes": self.values["dram_bytes"],
            "usable_bytes": self.usable_bytes,
            "bandwidth_bytes_per_s": self.values["bandwidth_bytes_per_s"],
            "compute_flops_fp16": self.compute_flops("fp16"),
            "measured": sorted(k for k, f in self.facts.items() if f.get("flag") == "measured"),
            "path": self.path,
        }


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for every ``{value: ...}`` leaf table."""
    found = {}
    for key, item in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, dict) and "value" in item:
            found[dotted] = item
        elif isinstance(item, dict):
            found.update(_flatten(item, dotted + "."))
    return found


def parse_profile(text: str, origin: str) -> DeviceProfile:
    """Parse and validate a profile; errors name the field."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"device profile {origin} is not valid TOML: {error}") from None
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise UserError(f"device profile {origin} needs a string field 'name'")
    facts = _flatten(document)
    for key in REQUIRED:
        if key not in facts:
            raise UserError(f"device profile {origin} is missing the field {key!r} (a table with value, flag, source)")
    values = {}
    for key, fact in facts.items():
        value = fact["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise UserError(f"device profile {origin}: field {key!r} must be a non-negative number, got {value!r}")
        positive = ("dram_bytes", "bandwidth_bytes_per_s", "efficiency.compute", "efficiency.bandwidth")
        if (key in positive or key.startswith("compute_flops.")) and value <= 0:
            raise UserError(f"device profile {origin}: field {key!r} must be positive, got {value!r}")
        if key == "usable_fraction" and not 0 < value <= 1:
            raise UserError(f"device profile {origin}: field 'usable_fraction' must be in (0, 1], got {value!r}")
        if fact.get("flag") not in FLAGS:
            raise UserError(f"device profile {origin}: field {key!r} needs flag 'spec' or 'measured'")
        if not fact.get("source"):
            raise UserError(f"device profile {origin}: field {key!r} needs a source")
        values[key] = float(value)
    return DeviceProfile(
        name=name,
        description=str(document.get("description", "")),
        backend=str(document.get("backend", "")),
        values=values,
        facts=facts,
        path=origin,
    )


def profile_paths() -> dict[str, Path]:
    """Known profiles by name: shipped ones, overridden by the user's own."""
    paths = {p.stem: p for p in sorted(SHIPPED.glob("*.toml"))}
    user = user_devices_dir()
    if user.is_dir():
        paths.update({p.stem: p for p in sorted(user.glob("*.toml"))})
    return paths


def get_device(name_or_path: str) -> DeviceProfile:
    """A profile by name (shipped or user) or by path to a TOML file."""
    if name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(f"device profile file {name_or_path!r} does not exist")
        return parse_profile(path.read_text(), str(path))
    paths = profile_paths()
    if name_or_path not in paths:
        hint = " (run 'moeplan devices calibrate' to create it)" if name_or_path == "host" else ""
        raise UserError(f"unknown device {name_or_path!r}{hint}; known devices: {', '.join(sorted(paths))}")
    return parse_profile(paths[name_or_path].read_text(), str(paths[name_or_path]))


def list_devices() -> list[DeviceProfile]:
    return [get_device(name) for name in sorted(profile_paths())]


def save_user_profile(profile: DeviceProfile) -> Path:
    folder = user_devices_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{profile.name}.toml"
    partial = path.with_suffix(".partial")
    partial.write_text(profile.to_toml())
    os.replace(partial, path)
    return path
