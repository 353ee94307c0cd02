"""Device profiles: the hardware facts the cost model needs, per device and per backend.

Profiles are TOML files. The shipped ones live beside this module (``search/device/builtin/``);
a user's own (``host``, written by ``moeplan devices calibrate``, and calibrated copies) live
in ``$MOEPLAN_DEVICES`` or ``~/.cache/moeplan/devices``. ``--device`` takes a name or a path.

A profile has device-wide numbers (:data:`SHARED`: DRAM, the app's share of it, peak DRAM
bandwidth) and one table per backend (``[backends.cpu]``, ``[backends.gpu]``,
``[backends.npu]``) with that unit's compute peaks per precision, efficiencies, overlap and
overheads. ``recommended_backend`` names the one used when none is asked for.

Every number is a table ``{value, state, basis, source}``. ``state`` is ``spec`` (published,
or derived from published figures), ``prior`` (moeplan's assumption, to be calibrated) or
``measured`` (measured or calibrated on a device); ``basis`` says how (vendor, third-party,
derived, assumption, calibrated). A backend fitted to measurements also keeps a
``[backends.NAME.calibration]`` table: the fitted terms, replicates of them drawn from the
fit's covariance (for intervals) and the rows the fit rests on.

Older single-backend files (every number at the top level, ``flag`` instead of ``state``)
still load: they become one backend named by their ``backend`` field, and ``flag = "spec"``
with ``basis = "assumption"`` reads as ``prior``.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from scaling.errors import UserError
from search.device.profile_keys import (  # noqa: F401  (re-exported: callers import them from here)
    BACKENDS,
    COMPUTE_FALLBACK,
    FRACTIONS,
    OPTIONAL,
    POSITIVE,
    PRECISIONS,
    REQUIRED,
    SHARED,
    STATES,
    ZERO_ALLOWED,
)

SHIPPED = Path(__file__).resolve().parent / "builtin"


def user_devices_dir() -> Path:
    root = os.environ.get("MOEPLAN_DEVICES") or Path.home() / ".cache" / "moeplan" / "devices"
    return Path(root)


@dataclass(frozen=True)
class CalibrationRecord:
    """What a calibration kept: the fitted terms, replicates of them, and the rows cited."""

    terms: tuple[str, ...]
    replicates: np.ndarray  # (n_replicates, len(terms)); empty when the fit left no degrees of freedom
    rows: tuple[str, ...]
    note: str = ""

    def to_toml_lines(self, prefix: str) -> list[str]:
        lines = [f"[{prefix}.calibration]", f"terms = [{', '.join(_quote(t) for t in self.terms)}]"]
        lines.append(f"note = {_quote(self.note)}")
        lines.append("rows = [")
        lines += [f"  {_quote(row)}," for row in self.rows]
        lines.append("]")
        lines.append("replicates = [")
        lines += ["  [" + ", ".join(repr(float(v)) for v in replicate) + "]," for replicate in self.replicates]
        lines.append("]")
        return lines


@dataclass(frozen=True)
class Backend:
    """One compute unit of a device: its numbers (facts by dotted key) and how it is run."""

    name: str
    runtime: str
    facts: dict[str, dict[str, Any]]
    record: CalibrationRecord | None = None

    def measured(self) -> list[str]:
        return sorted(key for key, fact in self.facts.items() if fact["state"] == "measured")


@dataclass(frozen=True)
class DeviceProfile:
    """A device's numbers, resolved for one backend (``backend``), with every backend kept.

    ``values`` and ``facts`` hold the device-wide numbers plus the selected backend's, by
    dotted key; :meth:`for_backend` resolves another backend.
    """

    name: str
    description: str
    shared: dict[str, dict[str, Any]]
    backends: dict[str, Backend]
    backend: str
    recommended_backend: str
    soc: str = ""
    socs: tuple[str, ...] = ()
    path: str = ""
    values: dict[str, float] = field(init=False, repr=False, compare=False)
    facts: dict[str, dict[str, Any]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.backend not in self.backends:
            known = ", ".join(self.backends)
            raise UserError(f"device {self.name!r} has no backend {self.backend!r}; its backends: {known}")
        facts = {**self.shared, **self.backends[self.backend].facts}
        object.__setattr__(self, "facts", facts)
        object.__setattr__(self, "values", {key: float(fact["value"]) for key, fact in facts.items()})

    # --- reading numbers ---------------------------------------------------------------------
    def __getitem__(self, key: str) -> float:
        return self.values[key]

    def get(self, key: str, default: float) -> float:
        return self.values.get(key, default)

    @property
    def usable_bytes(self) -> float:
        return self.values["dram_bytes"] * self.values["usable_fraction"]

    @property
    def record(self) -> CalibrationRecord | None:
        """The selected backend's calibration (``None`` when it rests on priors alone)."""
        return self.backends[self.backend].record

    @property
    def runtime(self) -> str:
        return self.backends[self.backend].runtime

    def compute_flops(self, precision: str) -> float:
        """Peak FLOP/s for matmuls whose weights are stored at ``precision``."""
        return compute_flops(self.values, precision)

    # --- other views -------------------------------------------------------------------------
    def for_backend(self, backend: str | None) -> DeviceProfile:
        """The same device resolved for ``backend`` (``None``: the recommended one)."""
        backend = backend or self.recommended_backend
        if backend == self.backend:
            return self
        if backend not in self.backends:
            known = ", ".join(self.backends)
            raise UserError(f"device {self.name!r} has no backend {backend!r}; its backends: {known}")
        return replace(self, backend=backend)

    def with_values(
        self,
        name: str,
        changes: dict[str, float],
        state: str,
        basis: str,
        source: str,
        record: CalibrationRecord | None = None,
    ) -> DeviceProfile:
        """A copy with some numbers of the selected backend (or device-wide ones) replaced.

        A calibration record whose terms are changed by hand no longer describes the numbers,
        so it is dropped unless a new one is given.
        """
        if state not in STATES:
            raise UserError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        shared = dict(self.shared)
        chosen = self.backends[self.backend]
        facts = dict(chosen.facts)
        for key, value in changes.items():
            fact = {"value": float(value), "state": state, "basis": basis, "source": source}
            (shared if key in SHARED else facts)[key] = fact
        kept = chosen.record
        if record is not None or (kept is not None and set(kept.terms) & set(changes)):
            kept = record
        backends = {**self.backends, self.backend: replace(chosen, facts=facts, record=kept)}
        return replace(self, name=name, shared=shared, backends=backends, path="")

    def summary(self) -> dict[str, Any]:
        """The ``devices list`` entry: device-wide numbers and, per backend, what is measured."""
        backends = {}
        for name, backend in self.backends.items():
            values = {key: float(fact["value"]) for key, fact in {**self.shared, **backend.facts}.items()}
            backends[name] = {
                "runtime": backend.runtime,
                "numbers": len(backend.facts),
                "measured": backend.measured(),
                "prior": sorted(k for k, f in backend.facts.items() if f["state"] == "prior"),
                "calibrated": backend.record is not None,
                "compute_flops_fp16": compute_flops(values, "fp16"),
                "effective_bandwidth_bytes_per_s": values["bandwidth_bytes_per_s"] * values["efficiency.bandwidth"],
            }
        shared_measured = sorted(k for k, f in self.shared.items() if f["state"] == "measured")
        return {
            "name": self.name,
            "description": self.description,
            "soc": self.soc,
            "backend": self.backend,
            "recommended_backend": self.recommended_backend,
            "backends": backends,
            "dram_bytes": self.values["dram_bytes"],
            "usable_bytes": self.usable_bytes,
            "bandwidth_bytes_per_s": self.values["bandwidth_bytes_per_s"],
            "compute_flops_fp16": self.compute_flops("fp16"),
            "measured": sorted({*shared_measured, *self.backends[self.backend].measured()}),
            "path": self.path,
            "builtin": bool(self.path) and Path(self.path).resolve().parent == SHIPPED,
        }

    def to_toml(self) -> str:
        """Serialise in the shipped files' layout (device-wide numbers, then each backend)."""
        lines = [
            "# A moeplan device profile: every number is {value, state, basis, source}; state is spec",
            "# (published or derived from published figures), prior (assumed, to be calibrated) or measured.",
            f"name = {_quote(self.name)}",
            f"description = {_quote(self.description)}",
            f"soc = {_quote(self.soc)}",
            f"socs = [{', '.join(_quote(s) for s in self.socs)}]",
            f"recommended_backend = {_quote(self.recommended_backend)}",
        ]
        lines += [_fact_line(key, fact) for key, fact in self.shared.items()]
        for name, backend in self.backends.items():
            lines += ["", f"[backends.{name}]", f"runtime = {_quote(backend.runtime)}"]
            lines += [_fact_line(key, fact) for key, fact in backend.facts.items()]
            if backend.record is not None:
                lines += ["", *backend.record.to_toml_lines(f"backends.{name}")]
        return "\n".join(lines) + "\n"

    @classmethod
    def single(cls, name: str, description: str, backend: str, runtime: str) -> DeviceProfile:
        """An empty one-backend profile, to be filled with :meth:`with_values`."""
        return cls(name, description, {}, {backend: Backend(backend, runtime, {})}, backend, backend)


def compute_flops(values: dict[str, Any], precision: str) -> Any:
    """Peak FLOP/s for ``precision`` in resolved ``values`` (fallback: the fp16 peak)."""
    key = f"compute_flops.{precision}"
    if key in values:
        return values[key]
    return values[f"compute_flops.{COMPUTE_FALLBACK.get(precision, 'fp16')}"]


def compute_efficiency(values: dict[str, Any], precision: str) -> Any:
    """The share of the peak a GEMM at ``precision`` sustains (fallback: ``efficiency.compute``)."""
    return values.get(f"efficiency.compute_{precision}", values["efficiency.compute"])


def _fact_line(key: str, fact: dict[str, Any]) -> str:
    items = ", ".join(f"{item} = {_quote(str(fact.get(item, '')))}" for item in ("state", "basis", "source"))
    return f"{key} = {{ value = {float(fact['value'])!r}, {items} }}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- parsing -------------------------------------------------------------------------------------
def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for every ``{value: ...}`` leaf table (skipping a backend's calibration)."""
    found = {}
    for key, item in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(item, dict) and "value" in item:
            found[dotted] = item
        elif isinstance(item, dict) and key != "calibration":
            found.update(_flatten(item, dotted + "."))
    return found


def _check_fact(origin: str, key: str, fact: dict[str, Any]) -> dict[str, Any]:
    """One number, validated; the error names the field."""
    value = fact["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"device profile {origin}: field {key!r} must be a number, got {value!r}")
    leaf = key.split(".", 2)[-1] if key.startswith("backends.") else key
    if value < 0:
        raise UserError(f"device profile {origin}: field {key!r} must not be negative, got {value!r}")
    if (leaf in POSITIVE or leaf.startswith("compute_flops.")) and leaf not in ZERO_ALLOWED and value == 0:
        raise UserError(f"device profile {origin}: field {key!r} must be positive, got {value!r}")
    if leaf in FRACTIONS and value > 1:
        raise UserError(
            f"device profile {origin}: field {key!r} is {value!r}, above 1 (a share of a peak cannot exceed it); "
            "lower it or raise the peak it divides"
        )
    state = fact.get("state")
    if state is None and "flag" in fact:  # older files: flag spec|measured
        flag = fact["flag"]
        state = "prior" if flag == "spec" and fact.get("basis") == "assumption" else flag
    if state not in STATES:
        raise UserError(f"device profile {origin}: field {key!r} needs a state, one of {', '.join(STATES)}")
    if not fact.get("source"):
        raise UserError(f"device profile {origin}: field {key!r} needs a source")
    return {"value": float(value), "state": state, "basis": str(fact.get("basis", "")), "source": str(fact["source"])}


def _check_keys(origin: str, prefix: str, facts: dict[str, Any], required: tuple[str, ...]) -> None:
    for key in required:
        if key not in facts:
            raise UserError(
                f"device profile {origin} is missing the field {prefix + key!r} (a table with value, state, basis, "
                "source)"
            )
    known = set(SHARED) | set(REQUIRED) | set(OPTIONAL)
    for key in facts:
        if key not in known:
            raise UserError(f"device profile {origin}: unknown field {prefix + key!r}; known fields: {sorted(known)}")


def _record(origin: str, backend: str, table: Any, facts: dict[str, Any]) -> CalibrationRecord | None:
    if table is None:
        return None
    where = f"backends.{backend}.calibration"
    if not isinstance(table, dict):
        raise UserError(f"device profile {origin}: {where} must be a table")
    terms, rows, replicates = table.get("terms"), table.get("rows"), table.get("replicates", [])
    if not isinstance(terms, list) or not terms or not all(isinstance(t, str) and t in facts for t in terms):
        raise UserError(f"device profile {origin}: {where}.terms must list fields of backend {backend!r}")
    if not isinstance(rows, list) or not rows:
        raise UserError(f"device profile {origin}: {where}.rows must cite the measurements the fit rests on")
    try:
        array = np.array(replicates, dtype=float).reshape(-1, len(terms))
    except (TypeError, ValueError):
        raise UserError(
            f"device profile {origin}: {where}.replicates must be lists of {len(terms)} numbers (one per term)"
        ) from None
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise UserError(f"device profile {origin}: {where}.replicates must be finite and non-negative")
    return CalibrationRecord(tuple(terms), array, tuple(str(r) for r in rows), str(table.get("note", "")))


def parse_profile(text: str, origin: str) -> DeviceProfile:
    """Parse and validate a profile; every error names the field."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"device profile {origin} is not valid TOML: {error}") from None
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise UserError(f"device profile {origin} needs a string field 'name'")
    tables = document.get("backends")
    top = {k: v for k, v in document.items() if k != "backends"}
    facts = {key: _check_fact(origin, key, fact) for key, fact in _flatten(top).items()}
    if tables is None:  # an older single-backend file
        backend = str(document.get("backend") or "cpu")
        shared = {k: v for k, v in facts.items() if k in SHARED}
        own = {k: v for k, v in facts.items() if k not in SHARED}
        _check_keys(origin, "", facts, SHARED + REQUIRED)
        backends = {backend: Backend(backend, str(document.get("runtime", backend)), own)}
        recommended = backend
    else:
        _check_keys(origin, "", facts, SHARED)
        extra = sorted(set(facts) - set(SHARED))
        if extra:
            raise UserError(
                f"device profile {origin}: field {extra[0]!r} belongs under a backend ([backends.NAME]); "
                f"device-wide fields are {', '.join(SHARED)}"
            )
        shared = facts
        if not isinstance(tables, dict) or not tables:
            raise UserError(f"device profile {origin}: 'backends' must hold at least one of {', '.join(BACKENDS)}")
        backends = {}
        for backend, table in tables.items():
            if backend not in BACKENDS:
                raise UserError(
                    f"device profile {origin}: unknown backend {backend!r} under 'backends'; "
                    f"allowed: {', '.join(BACKENDS)}"
                )
            prefix = f"backends.{backend}."
            own = {k: _check_fact(origin, prefix + k, f) for k, f in _flatten(table).items()}
            _check_keys(origin, prefix, own, REQUIRED)
            record = _record(origin, backend, table.get("calibration"), own)
            backends[backend] = Backend(backend, str(table.get("runtime", "")), own, record)
        recommended = document.get("recommended_backend")
        if recommended not in backends:
            raise UserError(
                f"device profile {origin}: 'recommended_backend' must name one of its backends "
                f"({', '.join(backends)}), got {recommended!r}"
            )
    socs = document.get("socs", [])
    if not isinstance(socs, list) or not all(isinstance(s, str) for s in socs):
        raise UserError(f"device profile {origin}: 'socs' must be a list of SoC names")
    return DeviceProfile(
        name=name,
        description=str(document.get("description", "")),
        shared=shared,
        backends=backends,
        backend=recommended,
        recommended_backend=recommended,
        soc=str(document.get("soc", "")),
        socs=tuple(socs),
        path=origin,
    )


def profile_paths() -> dict[str, Path]:
    """Known profiles by name: shipped ones, overridden by the user's own."""
    paths = {p.stem: p for p in sorted(SHIPPED.glob("*.toml"))}
    user = user_devices_dir()
    if user.is_dir():
        paths.update({p.stem: p for p in sorted(user.glob("*.toml"))})
    return paths


PROFILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""A profile's name: a plain file stem, never a path (no folder, no ``..``, no suffix)."""


def check_profile_name(name: str) -> str:
    """``name`` if it is a plain profile name (:data:`PROFILE_NAME`), else a :class:`UserError`."""
    if not isinstance(name, str) or not re.fullmatch(PROFILE_NAME, name):
        raise UserError(
            f"profile name {name!r} is not a plain name; use 1 to 64 letters, digits, '-' or '_', starting with "
            "a letter or digit (a name, never a path)"
        )
    return name


def is_builtin(name: str) -> bool:
    return (SHIPPED / f"{name}.toml").is_file()


def get_device(name_or_path: str, backend: str | None = None, allow_path: bool = True) -> DeviceProfile:
    """A profile by name (shipped or user) or, when ``allow_path``, by path to a TOML file, resolved for
    ``backend``. The HTTP service passes ``allow_path=False``: a client names profiles, never server files."""
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if not allow_path and not (isinstance(name_or_path, str) and re.fullmatch(PROFILE_NAME, name_or_path)):
        raise UserError(
            f"device must be a profile name, not a path; known devices: {', '.join(sorted(profile_paths()))}"
        )
    if name_or_path.endswith(".toml"):
        path = Path(name_or_path)
        if not path.is_file():
            raise UserError(f"device profile file {name_or_path!r} does not exist")
        return _parsed(path.read_text(), str(path)).for_backend(backend)
    paths = profile_paths()
    if name_or_path not in paths:
        hint = " (run 'moeplan devices calibrate' to create it)" if name_or_path == "host" else ""
        raise UserError(f"unknown device {name_or_path!r}{hint}; known devices: {', '.join(sorted(paths))}")
    return _parsed(paths[name_or_path].read_text(), str(paths[name_or_path])).for_backend(backend)


@functools.lru_cache(maxsize=64)
def _parsed(text: str, origin: str) -> DeviceProfile:
    """:func:`parse_profile` kept by text: parsing was most of a prediction's cost (profiles are frozen)."""
    return parse_profile(text, origin)


def list_devices() -> list[DeviceProfile]:
    return [get_device(name) for name in sorted(profile_paths())]


def save_profile(profile: DeviceProfile, path: Path) -> Path:
    """Write ``profile`` atomically to ``path`` (checked by parsing it back first)."""
    text = profile.to_toml()
    parse_profile(text, str(path))
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def save_user_profile(profile: DeviceProfile, replace_builtin: bool = False) -> Path:
    """Save under the user's profile folder, by the profile's (plain) name.

    A user profile named like a shipped one shadows it everywhere, so that takes ``replace_builtin``.
    """
    check_user_profile_name(profile.name, replace_builtin)
    folder = user_devices_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return save_profile(profile, folder / f"{profile.name}.toml")


def check_user_profile_name(name: str, replace_builtin: bool = False) -> str:
    """The checks of :func:`save_user_profile`, before any measuring starts."""
    check_profile_name(name)
    if is_builtin(name) and not replace_builtin:
        raise UserError(
            f"{name!r} is a built-in profile; saving under its name would shadow it everywhere: choose another "
            "--name, or pass --replace to shadow it on purpose"
        )
    return name
