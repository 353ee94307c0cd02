"""llama.cpp through ``llama-cpp-python``: load a GGUF file, run it on token ids, time it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from scaling.errors import UserError


def load(path: str | Path, n_ctx: int = 512, n_batch: int | None = None, threads: int | None = None) -> Any:
    """A ``llama_cpp.Llama`` on ``path`` that keeps every position's logits."""
    try:
        import llama_cpp
    except ImportError as error:
        raise UserError(
            f"llama.cpp is not installed ({error}); install it with pip install 'moeplan[llamacpp]' (see Makefile)"
        ) from None
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file {str(path)!r} does not exist")
    check_architecture(path)
    threads = threads or len(os.sched_getaffinity(0))
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_batch or n_ctx,
        n_ubatch=n_batch or n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        verbose=False,
    )


def check_architecture(path: Path) -> str:
    """The file's ``general.architecture``, refused unless llama.cpp's exported ones hold it."""
    import gguf

    from scaling.export.llama_arch import KNOWN_ARCHS

    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except Exception as error:  # not a GGUF file: the reader raises many types
        raise UserError(f"{str(path)!r} is not a readable GGUF file ({type(error).__name__}: {error})") from None
    if arch not in KNOWN_ARCHS:
        raise UserError(
            f"{str(path)!r} is a GGUF of architecture {arch!r}, which moeplan does not map to a shape; "
            f"known: {', '.join(KNOWN_ARCHS)} (export the shape with moeplan export --gguf)"
        )
    return arch


def logits(model: Any, tokens: list[int]) -> np.ndarray:
    """Logits of every position for ``tokens`` from an empty cache, (len, vocab) float32."""
    model.reset()
    model.eval(list(tokens))
    return np.array(model.scores[: len(tokens)], dtype=np.float32)


def time_once(model: Any, prompt: list[int], decode_tokens: int) -> tuple[float, float]:
    """Seconds to prefill ``prompt`` from an empty cache, and decode tokens per second after it."""
    model.reset()
    model._ctx.kv_cache_clear()
    start = time.perf_counter()
    model.eval(prompt)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    for index in range(decode_tokens):
        model.eval([prompt[index % len(prompt)]])
    return prefill_s, decode_tokens / (time.perf_counter() - start)
