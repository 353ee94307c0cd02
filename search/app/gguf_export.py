"""Export a shape or a trained proxy to GGUF: the face's glue between the shape, the proxy and the writer.

Random weights need no torch; a checkpoint's weights are read with it (only here and in
:mod:`scaling.proxy.gguf_weights`).
"""

from __future__ import annotations

from pathlib import Path

from scaling.export.gguf_writer import ExportResult, write_gguf
from scaling.shape.arch import ArchSpec


def export_shape(spec: ArchSpec, out: str | Path, type_name: str = "f32", seed: int = 0) -> ExportResult:
    """``spec`` with random weights (speed does not depend on them)."""
    return write_gguf(spec, out, type_name, seed=seed)


def export_checkpoint(
    checkpoint: str | Path, out: str | Path, type_name: str = "f32", source: str | None = None
) -> ExportResult:
    """A trained proxy's weights, exactly (at f32), from its ``checkpoint.pt``."""
    import torch

    from scaling.proxy.gguf_weights import gguf_weights
    from scaling.train.quant_eval import load_checkpoint

    model, _ = load_checkpoint(checkpoint, torch.device("cpu"))
    return write_gguf(model.arch, out, type_name, weights=gguf_weights(model), source=source or str(checkpoint))


def export_run(
    store_url: str | None, run_id: str, out: str | Path, type_name: str, checkpoint_dir: str | None
) -> ExportResult:
    """A finished run of the store, through its final checkpoint."""
    from scaling.runs.store import RunStore
    from scaling.runs.sweep import checkpoint_of

    store = RunStore(store_url, create=False)
    run = store.run(run_id)
    checkpoint = checkpoint_of(store, run["id"], checkpoint_dir)
    return export_checkpoint(checkpoint, out, type_name, source=f"run {run['id']} ({checkpoint})")
