"""Published phone measurements, parsed cell by cell into rows a calibration can use.

The file has the columns of ``published_measurements.csv`` (device, soc, runtime_backend,
model, quant, prompt_len, prefill_tok_s, decode_tok_s, ttft, peak_memory, model_size, source)
and may add ``arch``: a preset name, an architecture file or a Hugging Face ``config.json``
that overrides the model name. Rows are numbered from 1 after the header.

Free-text cells are read by an explicit grammar, and a cell outside it is refused with the
row named, never guessed:

* ``runtime_backend``: the unit in capitals (CPU, GPU, NPU), or a GPU API (Metal, OpenCL,
  Vulkan) which names the GPU.
* ``quant``: a format name (BF16, F16, Q8_0, Q4_0, q4f16_1, w4a16), or text with ``N-bit``
  weights, an optional group ``gN``, ``N-bit emb`` (embedding and output head) and ``N-bit dyn
  act``. ``A / B / C`` lists variants; ``... gN (gM)`` is two variants differing in group size.
  An unstated group size is moeplan's default (32), and an unstated embedding precision is the
  weights' one; both are noted on the row. Mixed k-quants (Q4_K_M) are refused.
* Rates: ``X``, ``~X (derived: ...)``, ``X (tgN)``, ``X (Y)`` (Y belongs to the second variant
  of ``gN (gM)``), ``X (Y on BUILD)`` (another build's figure, not used), and ``A / B / C``
  matching the quant's variants.
* ``prompt_len``: ``N``, ``ppN`` (llama-bench: its decode test starts from an empty cache),
  ``A..B (ctx C)`` with a ``ttft`` range ``a-b ms`` (two prefill points), or ``n/s`` (not
  stated: decode only).
* Memory: ``RSS N MiB``, ``PTE N MiB``, ``N GiB``, with ``/`` variants.

Decode runs after the prompt (context = prompt), except llama-bench's ``tgN`` (context N/2),
a prompt range (context = its low end, noted) and an unstated prompt (context 1, noted: the
KV cache is then not read).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from scaling.errors import UserError
from scaling.shape.arch import ArchSpec

COLUMNS = (
    "device",
    "soc",
    "runtime_backend",
    "model",
    "quant",
    "prompt_len",
    "prefill_tok_s",
    "decode_tok_s",
    "ttft",
    "peak_memory",
    "model_size",
    "source",
)
NUMBER = r"[0-9]+(?:\.[0-9]+)?"
DEFAULT_GROUP = 32
LLAMA_BENCH_DECODE = 128  # llama-bench's default tg length
# Published model names and the shapes they stand for (presets transcribed from config.json).
MODELS = {
    "llama 3.2 1b": "llama-3.2-1b",
    "llama 3.2 1b instruct": "llama-3.2-1b",
    "llama 3.2 3b": "llama-3.2-3b",
    "llama 3.2 3b instruct": "llama-3.2-3b",
    "llama 3 8b": "llama-3-8b",
    "llama 3.1 8b": "llama-3-8b",  # the same shape as Llama 3 8B
    "llama 2 7b": "llama-2-7b",
    "llama 2 7b chat": "llama-2-7b",
    "qwen (2.5) 1.5b": "qwen2.5-1.5b",
    "qwen2.5 1.5b": "qwen2.5-1.5b",
    "qwen2 1.5b": "qwen2.5-1.5b",  # Qwen2-1.5B and Qwen2.5-1.5B share one shape
}
FORMATS = {
    "bf16": ("bf16", None),
    "f16": ("fp16", None),
    "fp16": ("fp16", None),
    "f32": ("fp32", None),
    "fp32": ("fp32", None),
    "q8_0": ("int8", 32),
    "q4_0": ("int4", 32),
    "q4f16_1": ("int4", 32),  # MLC: 4-bit, groups of 32, fp16 scales
    "w4a16": ("int4", None),
    "w8a16": ("int8", None),
}
BITS = {4: "int4", 8: "int8", 16: "fp16"}


@dataclass(frozen=True)
class Quant:
    precision: str
    group_size: int
    embedding_precision: str
    label: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rate:
    value: float
    alternative: float | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Measurement:
    """One published figure set for one model, precision and prompt length."""

    row: int
    label: str
    device: str
    soc: str
    backend: str
    runtime: str
    model: str
    arch: ArchSpec
    precision: str
    group_size: int
    embedding_precision: str
    prompt_tokens: float
    prefill_ms: float
    decode_tokens_per_s: float
    context_tokens: float
    peak_memory_bytes: float
    model_size_bytes: float
    source: str
    notes: tuple[str, ...] = field(default=())


class RowError(UserError):
    """A measurement row that cannot be used; the message names the row."""


# --- cells ---------------------------------------------------------------------------------------
def backend_of(text: str) -> str | None:
    """cpu, gpu or npu from a runtime description (``None`` when it names none or several)."""
    units = {unit.lower() for unit in re.findall(r"\b(CPU|GPU|NPU)\b", text)}
    if not units and re.search(r"\b(Metal|OpenCL|Vulkan)\b", text):
        units = {"gpu"}
    return units.pop() if len(units) == 1 else None


def _size_suffix(text: str) -> tuple[str, tuple[str, ...]]:
    """Strip a trailing ``(3.56 GiB)`` (the model's size, repeated in model_size)."""
    match = re.fullmatch(rf"(.*?)\s*\(({NUMBER}\s*[GM]i?B)\)", text)
    return (match.group(1), (f"size {match.group(2)}",)) if match else (text, ())


def _one_quant(text: str) -> Quant:
    text, notes = _size_suffix(text.strip())
    known = FORMATS.get(text.lower())
    if known is not None:
        precision, group = known
        notes += () if group or precision not in ("int4", "int8") else (f"group size unstated: {DEFAULT_GROUP}",)
        return Quant(precision, group or DEFAULT_GROUP, precision, text, notes)
    if re.fullmatch(r"q\d_k(_[sml])?", text.lower()):
        raise ValueError(f"{text} mixes block formats of different bits; give the row's bits per weight as N-bit")
    roles: dict[str, set[int]] = {"weights": set(), "embedding": set(), "activations": set()}
    for bits, rest in re.findall(r"(\d+)-bit((?:\s+g\d+)?(?:\s+\w+)?(?:\s+\w+)?)", text):
        words = rest.split()
        words = [w for w in words if not re.fullmatch(r"g\d+", w)]
        role = "weights"
        if words and words[0].startswith("emb"):
            role = "embedding"
        elif words and words[0] in ("dyn", "dynamic", "act", "activations"):
            role = "activations"
        roles[role].add(int(bits))
    if len(roles["weights"]) != 1 or next(iter(roles["weights"])) not in BITS:
        raise ValueError("no single weight bit width (N-bit) in it")
    precision = BITS[roles["weights"].pop()]
    groups = {int(g) for g in re.findall(r"\bg(\d+)\b", text)}
    if len(groups) > 1:
        raise ValueError(f"several group sizes {sorted(groups)}")
    if groups:
        group = groups.pop()
    else:
        group = DEFAULT_GROUP
        notes += (f"group size unstated: {DEFAULT_GROUP}",)
    if len(roles["embedding"]) > 1 or (roles["embedding"] and next(iter(roles["embedding"])) not in BITS):
        raise ValueError("the embedding bit width is not one of 4, 8, 16")
    if roles["embedding"]:
        embedding = BITS[roles["embedding"].pop()]
    else:
        embedding = precision
        notes += ("embedding precision unstated: the weights'",)
    if roles["activations"]:
        notes += (f"{min(roles['activations'])}-bit dynamic activations",)
    return Quant(precision, group, embedding, text, notes)


def parse_quant(text: str) -> list[Quant]:
    """The variants a quant cell describes (see the module docstring)."""
    text = text.strip()
    if not text or text.lower().startswith("n/s"):
        raise ValueError("the quantisation is not stated")
    paired = re.fullmatch(r"(.*\bg(\d+))\s*\(g(\d+)\)", text)
    if paired:
        first = _one_quant(paired.group(1))
        labelled = Quant(
            first.precision, first.group_size, first.embedding_precision, f"g{paired.group(2)}", first.notes
        )
        second = Quant(
            first.precision, int(paired.group(3)), first.embedding_precision, f"g{paired.group(3)}", first.notes
        )
        return [labelled, second]
    return [_one_quant(part) for part in text.split(" / ")]


def _one_rate(text: str) -> Rate:
    match = re.fullmatch(rf"(~)?({NUMBER})(?:\s*\((.*)\))?", text.strip())
    if not match:
        raise ValueError("not a number, with an optional note in parentheses")
    value, note = float(match.group(2)), match.group(3)
    notes = ("approximate",) if match.group(1) else ()
    if note is None:
        return Rate(value, None, notes)
    note = note.strip()
    if note.startswith("derived:"):
        return Rate(value, None, (*notes, f"derived ({note[8:].strip()})"))
    if re.fullmatch(r"tg\d+", note):
        return Rate(value, None, (*notes, note))
    if re.fullmatch(rf"{NUMBER}\s+on\s+.+", note):
        return Rate(value, None, (*notes, f"'{note}' is another build's figure, not used"))
    if re.fullmatch(NUMBER, note):
        return Rate(value, float(note), notes)
    raise ValueError(f"the note ({note}) is none of derived:, tgN, N on BUILD, or a second variant's N")


def parse_rates(text: Any) -> list[Rate]:
    """The figures of a rate cell, one per ``/`` variant (empty when the cell is empty)."""
    if _missing(text):
        return []
    return [_one_rate(part) for part in str(text).split(" / ")]


def parse_prompt(text: Any) -> tuple[float | None, tuple[float, float] | None, bool, tuple[str, ...]]:
    """(prompt, prompt range, llama-bench, notes) from a prompt_len cell."""
    text = "" if _missing(text) else str(text).strip()
    if re.fullmatch(r"\d+", text):
        return float(text), None, False, ()
    if re.fullmatch(r"pp\d+", text):
        return float(text[2:]), None, True, ()
    ranged = re.fullmatch(r"(\d+)\.\.(\d+)(?:\s*\((.*)\))?", text)
    if ranged:
        note = (ranged.group(3),) if ranged.group(3) else ()
        return None, (float(ranged.group(1)), float(ranged.group(2))), False, note
    if text.lower().startswith("n/s"):
        return None, None, False, ("prompt length not stated",)
    raise ValueError("not N, ppN, A..B or n/s")


def parse_ttft_range(text: Any) -> tuple[float, float]:
    """A ``a-b ms`` (or ``s``) TTFT range in milliseconds."""
    match = None if _missing(text) else re.fullmatch(rf"({NUMBER})\s*-\s*({NUMBER})\s*(ms|s)", str(text).strip())
    if not match:
        raise ValueError("a prompt range needs a ttft range 'a-b ms'")
    scale = 1.0 if match.group(3) == "ms" else 1e3
    return float(match.group(1)) * scale, float(match.group(2)) * scale


def parse_bytes(text: Any) -> list[float]:
    """Byte sizes of a memory cell (``RSS 3185 MiB``, ``3.56 GiB``, ``12.55 / 6.67 / 3.56 GiB``)."""
    if _missing(text):
        return []
    match = re.fullmatch(rf"(?:RSS|PTE)?\s*({NUMBER}(?:\s*/\s*{NUMBER})*)\s*(MiB|GiB|MB|GB)", str(text).strip())
    if not match:
        raise ValueError("not 'RSS N MiB', 'PTE N MiB' or 'N GiB'")
    unit = {"MiB": 2**20, "GiB": 2**30, "MB": 1e6, "GB": 1e9}[match.group(2)]
    return [float(part) * unit for part in match.group(1).split("/")]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


# --- models --------------------------------------------------------------------------------------
def _normalise(name: str) -> str:
    return " ".join(name.lower().replace("-", " ").replace("_", " ").split())


def resolve_model(name: str, arch: Any = None) -> ArchSpec:
    """The shape of a published model (by name), or of the row's ``arch`` cell when given."""
    from scaling.shape.presets import get_preset, preset_names

    if not _missing(arch):
        reference = str(arch).strip()
        if reference.endswith("config.json"):
            from scaling.shape.hf_config import load_hf_config

            return load_hf_config(reference)
        if reference.endswith((".toml", ".json")):
            from scaling.shape.arch import load_arch_file

            return load_arch_file(reference)
        if reference in preset_names():
            return get_preset(reference)
        raise ValueError(f"arch {reference!r} is neither a preset nor an architecture or config.json file")
    preset = MODELS.get(_normalise(name))
    if preset is None:
        raise ValueError(
            f"model {name!r} is not one moeplan knows (known: {', '.join(sorted(MODELS))}); "
            "add an 'arch' column with a preset, an architecture file or a config.json"
        )
    return get_preset(preset)


# --- rows ----------------------------------------------------------------------------------------
def _pair(rates: list[Rate], count: int, what: str) -> list[float]:
    """One figure per quant variant (NaN where the cell is empty)."""
    if not rates:
        return [math.nan] * count
    if len(rates) == count and all(r.alternative is None for r in rates):
        return [r.value for r in rates]
    if count == 2 and len(rates) == 1 and rates[0].alternative is not None:
        return [rates[0].value, rates[0].alternative]
    if count == 2 and len(rates) == 1:
        raise ValueError(f"{what} gives one figure for two quant variants")
    raise ValueError(f"{what} has {len(rates)} figure(s) for {count} quant variant(s)")


def _row_label(number: int, row: pd.Series) -> str:
    return f"row {number} ({row['device']}, {row['model']}, {row['quant']})"


def _range_measurements(common, variant, prompt_range, ttft, decode_rate, notes, ttft_text) -> list[Measurement]:
    """A row given as a prompt range: prefill at both ends from the ttft range, decode at the short end."""
    low, high = prompt_range
    context_note = f"decode context taken as the shortest prompt ({low:g})"
    return [
        Measurement(
            **common,
            label=f"{variant} [prompt {tokens:g}]",
            prompt_tokens=tokens,
            prefill_ms=ms,
            decode_tokens_per_s=rate,
            context_tokens=low,
            notes=(*notes, f"prefill from the ttft range {ttft_text}", context_note),
        )
        for tokens, ms, rate in ((low, ttft[0], decode_rate), (high, ttft[1], math.nan))
    ]


def _decode_context(llama_bench: bool, prompt: float | None, notes: tuple[str, ...]) -> tuple[float, tuple[str, ...]]:
    """The KV-cache length a row's decode rate was measured at, with the note saying why."""
    if llama_bench:
        counts = [int(n[2:]) for n in notes if re.fullmatch(r"tg\d+", n)]
        context = (counts[0] if counts else LLAMA_BENCH_DECODE) / 2
        return context, (f"llama-bench decode from an empty cache: context {context:g}",)
    if prompt is None:
        return 1.0, ("decode context unstated: KV cache not read",)
    return prompt, ()


def parse_row(number: int, row: pd.Series) -> list[Measurement]:
    """The measurements of one row (several when a cell lists variants or a prompt range)."""
    label = _row_label(number, row)
    column = "quant"
    try:
        backend = backend_of(str(row["runtime_backend"]))
        if backend is None:
            column = "runtime_backend"
            raise ValueError("it names no single unit (CPU, GPU, NPU) nor a GPU API")
        column = "model"
        arch = resolve_model(str(row["model"]), row.get("arch"))
        column = "quant"
        quants = parse_quant(str(row["quant"]))
        column = "prompt_len"
        prompt, prompt_range, llama_bench, prompt_notes = parse_prompt(row["prompt_len"])
        column = "prefill_tok_s"
        prefill_rates = parse_rates(row["prefill_tok_s"])
        prefill = _pair(prefill_rates, len(quants), "prefill_tok_s")
        column = "decode_tok_s"
        decode_rates = parse_rates(row["decode_tok_s"])
        decode = _pair(decode_rates, len(quants), "decode_tok_s")
        column = "peak_memory"
        memory = parse_bytes(row.get("peak_memory"))
        column = "model_size"
        sizes = parse_bytes(row.get("model_size"))
        for values, name in ((memory, "peak_memory"), (sizes, "model_size")):
            if values and len(values) != len(quants):
                column = name
                raise ValueError(f"{len(values)} figure(s) for {len(quants)} quant variant(s)")
        column = "prompt_len"
        if prompt is None and prompt_range is None and any(not math.isnan(p) for p in prefill):
            raise ValueError("a prefill rate needs a prompt length")
        column = "ttft"
        ttft = parse_ttft_range(row.get("ttft")) if prompt_range is not None else None
    except (ValueError, UserError) as error:
        raise RowError(f"measurements {label}: {column} {str(row.get(column))!r} cannot be used: {error}") from None
    if not quants or (all(math.isnan(p) for p in prefill) and all(math.isnan(d) for d in decode)):
        raise RowError(f"measurements {label}: neither a prefill nor a decode rate")
    notes_all = tuple(n for rate in [*prefill_rates, *decode_rates] for n in rate.notes) + prompt_notes
    found = []
    for index, quant in enumerate(quants):
        variant = label if len(quants) == 1 else f"{label} [{quant.label}]"
        notes = (*quant.notes, *notes_all)
        common = {
            "row": number,
            "device": str(row["device"]),
            "soc": str(row["soc"]),
            "backend": backend,
            "runtime": str(row["runtime_backend"]),
            "model": str(row["model"]),
            "arch": arch,
            "precision": quant.precision,
            "group_size": quant.group_size,
            "embedding_precision": quant.embedding_precision,
            "peak_memory_bytes": memory[index] if memory else math.nan,
            "model_size_bytes": sizes[index] if sizes else math.nan,
            "source": str(row.get("source", "")),
        }
        if prompt_range is not None:
            found += _range_measurements(common, variant, prompt_range, ttft, decode[index], notes, row["ttft"])
            continue
        context, extra = _decode_context(llama_bench, prompt, notes_all)
        found.append(
            Measurement(
                **common,
                label=variant,
                prompt_tokens=math.nan if prompt is None else prompt,
                prefill_ms=math.nan if prompt is None or math.isnan(prefill[index]) else 1e3 * prompt / prefill[index],
                decode_tokens_per_s=decode[index],
                context_tokens=context,
                notes=(*notes, *extra),
            )
        )
    return found


def read_measurements(
    frame: pd.DataFrame,
    backend: str | None = None,
    socs: tuple[str, ...] | None = None,
) -> list[Measurement]:
    """The parsed measurements of the rows run on ``backend`` by one of ``socs`` (default: all)."""
    missing = [c for c in ("device", "soc", "runtime_backend", "model", "quant") if c not in frame.columns]
    if missing:
        raise UserError(f"the measurements lack column(s) {missing}; needed: {', '.join(COLUMNS)}")
    for optional in ("prompt_len", "prefill_tok_s", "decode_tok_s", "ttft", "peak_memory", "model_size", "source"):
        if optional not in frame.columns:
            frame = frame.assign(**{optional: math.nan})
    found = []
    for position, (_, row) in enumerate(frame.iterrows(), start=1):
        unit = backend_of(str(row["runtime_backend"]))
        if unit is None:
            raise RowError(
                f"measurements {_row_label(position, row)}: runtime_backend {row['runtime_backend']!r} names no "
                "single unit (CPU, GPU, NPU) nor a GPU API (Metal, OpenCL, Vulkan)"
            )
        if backend is not None and unit != backend:
            continue
        if socs is not None and str(row["soc"]).strip() not in socs:
            continue
        found.extend(parse_row(position, row))
    return found


def load_measurements(path: str | Path) -> pd.DataFrame:
    """A measurement file as text cells (no number is inferred by pandas)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"measurement file {str(path)!r} does not exist")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {str(path)!r} as CSV: {' '.join(str(error).split())}") from None


def frame_of(measurements: list[Measurement]) -> pd.DataFrame:
    """The measurements as a table (one row per measurement, the shapes in ``arch``)."""
    return pd.DataFrame([vars(m) for m in measurements])
