"""``moeplan bench --runtime llamacpp``: a shape's prefill and decode in llama.cpp on this machine.

The shape is exported with random weights (speed does not depend on them) at the asked type,
or an existing GGUF is read with its manifest. The keys are those of ``bench --mode infer``
(:func:`scaling.train.bench_infer.bench_infer`), including the spread of the samples and the
host-contention probe between them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from scaling.export.gguf_writer import check_type, read_manifest, write_gguf
from scaling.shape import accounting
from scaling.shape.arch import ArchSpec
from scaling.train.bench import HostProbe
from scaling.train.bench_infer import timing_fields
from search.app import llamacpp_runtime

PRECISION_OF_TYPE = {"f32": "fp32", "f16": "fp16", "q8_0": "int8", "q4_0": "int4"}


def bench_llamacpp(
    arch: ArchSpec | None = None,
    gguf: str | Path | None = None,
    type_name: str = "q4_0",
    prompt_tokens: int = 128,
    decode_tokens: int = 32,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Median prefill ms and decode tokens/s of ``arch`` (exported here) or of ``gguf`` (its manifest's shape)."""
    with tempfile.TemporaryDirectory(prefix="moeplan-bench-") as folder:
        if gguf is None:
            type_name = check_type(type_name)
            manifest = write_gguf(arch, Path(folder) / "shape.gguf", type_name).manifest
            path = Path(folder) / "shape.gguf"
        else:
            path = Path(gguf)
            llamacpp_runtime.check_architecture(path) if path.is_file() else None
            manifest = read_manifest(path.with_name(path.name + ".json"))
            arch = ArchSpec.from_dict(manifest["arch"])
            type_name = manifest["type"]
        model = llamacpp_runtime.load(
            path, n_ctx=prompt_tokens + decode_tokens + 8, n_batch=prompt_tokens, threads=threads
        )
        prompt = [
            int(t)
            for t in torch.randint(0, arch.vocab_size, (prompt_tokens,), generator=torch.Generator().manual_seed(0))
        ]
        probe = HostProbe(torch.device("cpu"), repeats)
        prefill, decode = [], []
        for index in range(warmup + repeats):
            prefill_s, rate = llamacpp_runtime.time_once(model, prompt, decode_tokens)
            if index >= warmup:
                prefill.append(prefill_s)
                decode.append(rate)
                probe.maybe_probe(index - warmup)  # outside the timed regions
        n_threads = model.n_threads if hasattr(model, "n_threads") else threads
        del model
    precision = PRECISION_OF_TYPE[type_name]
    return {
        "mode": "infer",
        "backend": "llamacpp",
        "runtime": "llamacpp",
        "arch": arch.name,
        "device": "cpu",
        "precision": precision,
        "type": type_name,
        "llama_arch": manifest["llama_arch"],
        "sha256": manifest["sha256"],
        "threads": n_threads,
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        **timing_fields(prefill, decode),
        **probe.result(),
        "peak_memory_bytes": int(manifest["file_bytes"]),
        "weight_bytes": int(manifest["file_bytes"]),
        "total_params": int(accounting.total_params(arch)),
        "active_params": int(accounting.active_params(arch)),
        "arch_spec": arch.to_dict(),
    }
