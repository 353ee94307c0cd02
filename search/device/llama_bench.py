"""Read ``llama-bench`` output and match each row to an exported shape.

The four formats are those of ``tools/llama-bench/README.md`` in llama.cpp at
ggml-org/llama.cpp@0c1e57098 (the commit llama-cpp-python 0.3.36 vendors): ``-o json`` (one
array of objects), ``-o jsonl`` (one object a line), ``-o csv`` (a header of field names, quoted
values) and ``-o md`` (the markdown table: ``model`` is ``llama_model_desc`` — "bailingmoe ?B
Q4_0" —, ``params`` ``%.2f M`` or ``%.2f B``, ``test`` ``pp512``, ``tg128``, ``pp512+tg128``
and `` @ d1024`` for a depth, ``t/s`` "mean ± sd"). ``avg_ts`` is tokens per second: a ``pp N``
row's prefill takes ``N / avg_ts`` seconds; a ``tg N`` row decodes at ``avg_ts`` from context
``n_depth`` to ``n_depth + N``.

A row matches a manifest (``moeplan export`` writes one beside each GGUF) by its file name, or,
where the format prints none (markdown), by the parameter count, type and llama.cpp
architecture llama-bench prints. A row that matches none, or several, is refused by name.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from scaling.checks import read_text_file
from scaling.errors import UserError
from scaling.shape.arch import ArchSpec
from search.device.measurements import Measurement
from search.device.moe_overheads import moe_overhead_source, moe_overhead_values

README = "llama.cpp tools/llama-bench/README.md at ggml-org/llama.cpp@0c1e57098"
FORMATS = ("json", "jsonl", "csv", "md")
PRECISION_OF_TYPE = {"F32": "fp32", "F16": "fp16", "Q8_0": "int8", "Q4_0": "int4"}
TYPE_PATTERN = re.compile(r"\b(F32|F16|Q8_0|Q4_0|Q4_K|Q5_K|Q6_K|Q4_1|Q5_0|Q5_1|BF16)\b", re.IGNORECASE)
TEST_PATTERN = re.compile(r"^(?:pp\s*(\d+))?(?:\+?tg\s*(\d+))?(?:\s*@\s*d(\d+))?$")


@dataclass
class BenchRow:
    """One llama-bench test: the model it names and its speed."""

    line: int
    model_filename: str
    model_type: str
    model_n_params: float
    params_exact: bool
    n_prompt: int
    n_gen: int
    n_depth: int
    avg_ts: float
    stddev_ts: float
    backends: str
    n_threads: str
    cpu_info: str
    build_commit: str

    @property
    def test(self) -> str:
        text = f"pp{self.n_prompt}" if self.n_prompt else ""
        text += ("+" if text and self.n_gen else "") + (f"tg{self.n_gen}" if self.n_gen else "")
        return text + (f" @ d{self.n_depth}" if self.n_depth else "")

    @property
    def label(self) -> str:
        name = self.model_filename or self.model_type
        return f"line {self.line} ({name}, {self.test})"


def detect_format(text: str, path: str) -> str:
    """json, jsonl, csv or md, from the content (the extension only breaks ties)."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        return "json"
    if stripped.startswith("{"):
        return "jsonl"
    if stripped.startswith("|"):
        return "md"
    if stripped.split("\n", 1)[0].count(",") >= 3:
        return "csv"
    raise UserError(
        f"{path!r} is not llama-bench output in any of its formats ({', '.join(FORMATS)}); run llama-bench with "
        "-o jsonl (or json, csv, md) and give that file"
    )


def read_llama_bench(path: str | Path) -> list[BenchRow]:
    """Every test row of a llama-bench output file; refuses a file with none."""
    text = read_text_file(path, "llama-bench output", "the output of llama-bench -o jsonl|json|csv|md")
    kind = detect_format(text, str(path))
    try:
        rows = {"json": _json, "jsonl": _jsonl, "csv": _csv, "md": _markdown}[kind](text)
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot read {str(path)!r} as llama-bench {kind} output: {error}") from None
    if not rows:
        raise UserError(f"{str(path)!r} holds no llama-bench rows ({kind}); did llama-bench finish a test?")
    return rows


def _from_record(record: dict[str, Any], line: int) -> BenchRow:
    missing = [k for k in ("model_type", "model_n_params", "n_prompt", "n_gen", "avg_ts") if k not in record]
    if missing:
        raise ValueError(f"line {line} lacks field(s) {missing}")
    return BenchRow(
        line=line,
        model_filename=str(record.get("model_filename", "")),
        model_type=str(record["model_type"]),
        model_n_params=float(record["model_n_params"]),
        params_exact=True,
        n_prompt=int(record["n_prompt"]),
        n_gen=int(record["n_gen"]),
        n_depth=int(record.get("n_depth", 0) or 0),
        avg_ts=float(record["avg_ts"]),
        stddev_ts=float(record.get("stddev_ts", 0) or 0),
        backends=str(record.get("backends", "")),
        n_threads=str(record.get("n_threads", "")),
        cpu_info=str(record.get("cpu_info", "")),
        build_commit=str(record.get("build_commit", "")),
    )


def _json(text: str) -> list[BenchRow]:
    records = json.loads(text)
    if not isinstance(records, list):
        raise ValueError("a json file holds one array of tests")
    return [_from_record(record, index) for index, record in enumerate(records, start=1)]


def _jsonl(text: str) -> list[BenchRow]:
    lines = [(index, line) for index, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return [_from_record(json.loads(line), index) for index, line in lines]


def _csv(text: str) -> list[BenchRow]:
    reader = csv.DictReader(io.StringIO(text))
    return [_from_record(record, index) for index, record in enumerate(reader, start=2)]


def _markdown(text: str) -> list[BenchRow]:
    lines = [(index, line.strip()) for index, line in enumerate(text.splitlines(), start=1)]
    table = [(index, line) for index, line in lines if line.startswith("|")]
    if len(table) < 2:
        return []
    header = [cell.strip() for cell in table[0][1].strip("|").split("|")]
    rows = []
    for index, line in table[2:]:  # the second line is the --- separator
        cells = dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=False))
        test = TEST_PATTERN.match(cells["test"].replace(" ", "").replace("@d", " @ d"))
        if test is None or not any(test.groups()[:2]):
            raise ValueError(f"line {index}: test {cells['test']!r} is not pp N, tg N or pp N+tg N")
        number, unit = cells["params"].split()
        mean = cells["t/s"].split("±")
        rows.append(
            BenchRow(
                line=index,
                model_filename="",
                model_type=cells["model"],
                model_n_params=float(number) * {"K": 1e3, "M": 1e6, "B": 1e9}[unit],
                params_exact=False,
                n_prompt=int(test.group(1) or 0),
                n_gen=int(test.group(2) or 0),
                n_depth=int(test.group(3) or 0),
                avg_ts=float(mean[0]),
                stddev_ts=float(mean[1]) if len(mean) > 1 else 0.0,
                backends=cells.get("backend", ""),
                n_threads=cells.get("threads", cells.get("n_threads", "")),
                cpu_info="",
                build_commit="",
            )
        )
    return rows


# --- matching rows to shapes ---------------------------------------------------------------------
def load_manifests(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Manifests from files (``*.gguf.json``) and folders holding them."""
    from scaling.export.gguf_writer import read_manifest

    found = []
    for path in map(Path, paths):
        files = sorted(path.glob("*.gguf.json")) if path.is_dir() else [path]
        found += [read_manifest(file) for file in files]
    return found


def _row_type(row: BenchRow) -> str | None:
    match = TYPE_PATTERN.search(row.model_type)
    return match.group(1).upper() if match else None


def _basename(name: str) -> str:
    return (PureWindowsPath(name) if "\\" in name else PurePosixPath(name)).name


def match_row(row: BenchRow, manifests: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The one manifest a row measured: by file name, else by parameters, type and architecture."""
    if row.model_filename:
        named = [m for m in manifests if m["file"] == _basename(row.model_filename)]
        if len(named) == 1:
            return named[0] if named[0]["gguf_n_params"] == row.model_n_params else None
    kind = _row_type(row)
    tolerance = 0.0 if row.params_exact else (5e3 if row.model_n_params < 1e9 else 5e6)  # %.2f M or B
    candidates = [
        m
        for m in manifests
        if abs(m["gguf_n_params"] - row.model_n_params) <= tolerance
        and kind == m["type"].upper()
        and row.model_type.split()[0] == m["llama_arch"]
    ]
    unique = {m["sha256"]: m for m in candidates}
    return next(iter(unique.values())) if len(unique) == 1 else None


def to_measurements(
    rows: list[BenchRow], manifests: list[dict[str, Any]], device: str, backend: str, source: str
) -> list[Measurement]:
    """Measurements of matched rows; refuses unmatched ones and rows mixing prefill and decode."""
    unmatched = [row for row in rows if match_row(row, manifests) is None]
    if unmatched:
        names = "; ".join(f"{r.label}: {r.model_n_params:.0f} params, {r.model_type!r}" for r in unmatched[:5])
        more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
        raise UserError(
            f"{len(unmatched)} llama-bench row(s) match no exported shape: {names}{more}; give the manifests "
            f"moeplan export wrote beside the GGUF files with --manifest (known: {len(manifests)})"
        )
    mixed = [row.label for row in rows if row.n_prompt and row.n_gen]
    if mixed:
        raise UserError(
            f"rows {', '.join(mixed[:5])} time prefill and decode together (pp+tg); run llama-bench with "
            "-p and -n (separate pp and tg tests)"
        )
    measurements = []
    for row in rows:
        manifest = match_row(row, manifests)
        arch = ArchSpec.from_dict(manifest["arch"])
        prefill = row.n_prompt > 0
        measurements.append(
            Measurement(
                row=row.line,
                label=row.label,
                device=device,
                soc="",
                backend=backend,
                runtime=f"llama.cpp {row.build_commit} ({row.backends or backend})".strip(),
                model=arch.name or manifest["file"],
                arch=arch,
                precision=manifest["precision"],
                group_size=32,
                embedding_precision=manifest["precision"],
                prompt_tokens=float(row.n_prompt) if prefill else math.nan,
                prefill_ms=1e3 * row.n_prompt / row.avg_ts if prefill else math.nan,
                decode_tokens_per_s=row.avg_ts if not prefill else math.nan,
                context_tokens=float(row.n_depth + (row.n_prompt if prefill else row.n_gen / 2)),
                peak_memory_bytes=math.nan,
                model_size_bytes=math.nan,
                source=f"{source}, {row.label}, sha256 {manifest['sha256'][:12]}",
            )
        )
    return measurements


def fitted_terms(measurements: list[Measurement], profile: Any = None) -> tuple[str, ...]:
    """The backend fit's identifiable terms, plus the fixed cost of a forward pass where decode rows
    of two models or more tell it from the bandwidth: llama.cpp's per-token cost (graph build,
    thread barriers, sampling) is what makes small models slower than their bytes say.

    With a ``profile`` that states its ``cache_bytes``, decode rows of models on both sides of
    that size free the cache-resident bandwidth (``efficiency.cache_speedup``), and prefill rows
    at two prompt lengths the fixed cost per token of a pass (``overheads.per_token_s``)."""
    from search.device.backend_fit import identifiable_terms

    terms = identifiable_terms(measurements)
    decode_models = {m.arch.name for m in measurements if math.isfinite(m.decode_tokens_per_s)}
    if len(decode_models) >= 2:
        terms = (*terms, "overheads.per_forward_s")
    layers = {m.arch.n_layers for m in measurements if math.isfinite(m.decode_tokens_per_s)}
    if len(decode_models) >= 3 and len(layers) >= 2:
        terms = (*terms, "overheads.per_layer_s")
    cache = profile.get("cache_bytes", 0.0) if profile is not None else 0.0
    if cache > 0:
        sizes = {m.arch.name: _weight_bytes(m) for m in measurements if math.isfinite(m.decode_tokens_per_s)}
        if any(b < cache for b in sizes.values()) and any(b > cache for b in sizes.values()):
            terms = (*terms, "efficiency.cache_speedup")
        if "efficiency.half_tokens" in terms:
            terms = (*terms, "overheads.per_token_s")
        # MoE decode rows of two MoE models or more tell the gathered-expert cost (mul_mat_id) of
        # each MoE layer from the dense layers' cost.
        moe = {m.arch.name for m in measurements if math.isfinite(m.decode_tokens_per_s) and m.arch.n_experts > 1}
        if len(moe) >= 2:
            terms = (*terms, "overheads.per_moe_layer_s")
    return terms


def _weight_bytes(row: Measurement) -> float:
    from scaling.shape import accounting

    return float(accounting.weight_bytes(row.arch, row.precision, group_size=row.group_size))


def llamacpp_priors(profile: Any) -> Any:
    """The profile with llama.cpp's structure where it differs from a dequantise-then-multiply runtime.

    llama.cpp's q4_0/q8_0 kernels quantise the activations to 8 bits and take integer dot products
    with the packed codes (``ggml_vec_dot_q4_0_q8_0``): no separate dequantisation pass, so its
    cost per weight is 0; its MoE overheads are :data:`search.device.moe_overheads.RUNTIMES`'s
    llama.cpp priors (one fused ``mul_mat_id`` per MoE layer), which a fit may replace."""
    changes = {"overheads.dequant_flops_per_weight": 0.0, **moe_overhead_values("llama.cpp")}
    return profile.with_values(
        profile.name,
        changes,
        "prior",
        "assumption",
        "llama.cpp integer dot products on packed codes (ggml_vec_dot_q4_0_q8_0): no dequantisation pass; "
        + moe_overhead_source("llama.cpp"),
    )
