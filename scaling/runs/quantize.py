"""Quantising finished runs: one run and one scheme at a time, or every run of a sweep.

A result is written in one transaction once it is complete, so a process killed at any moment
leaves either nothing or the whole result, and running again fills in what is missing. A run's
training results (its row, curve, routing, measurements and checkpoint) are only read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scaling.errors import UserError
from scaling.runs.spec import RunConfig
from scaling.runs.store import RunStore
from scaling.shape.scheme import Scheme

# The checkpoint's validation loss must reproduce the run's stored final loss this closely
# (nats/byte): otherwise the checkpoint is not that run's last one, or the windows differ.
LOSS_MATCH = 1e-3

_CORPORA: dict[str, Any] = {}


def _corpus(name: str):
    from scaling.train.corpus import prepare_corpus

    if name not in _CORPORA:
        _CORPORA[name] = prepare_corpus(name)
    return _CORPORA[name]


def quantize_run(
    store: RunStore,
    run_id: str,
    scheme: Scheme,
    method: str,
    checkpoint: Path,
    *,
    device: str = "cpu",
) -> dict[str, Any]:
    """Quantise a finished run's checkpoint, evaluate it, and store the result; returns it.

    ``checkpoint`` is the run's final checkpoint (:func:`scaling.runs.sweep.checkpoint_of`).
    """
    from scaling.train.quant_eval import quantize_checkpoint

    run = store.run(run_id)
    if run["status"] != "finished":
        raise UserError(f"run {run['id']} is {run['status']}; only finished runs can be quantised")
    config = json.loads(run["config"])
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"run {run['id']} has no checkpoint at {str(path)!r}; pass --checkpoint-dir")
    result = quantize_checkpoint(path, scheme, method, _corpus(config.get("corpus", "shakespeare")), device)
    if run["final_val_loss"] is not None and abs(result.loss_before - run["final_val_loss"]) > LOSS_MATCH:
        raise RuntimeError(
            f"checkpoint {path} gives validation loss {result.loss_before:.5f}, but run {run['id']} "
            f"finished at {run['final_val_loss']:.5f}: it is not that run's final checkpoint"
        )
    document = {"run_id": run["id"], "arch_name": run["arch_name"], **result.to_dict()}
    store.record_quantization(run["id"], document)
    return document


def quantize_finished(
    store: RunStore,
    runs: list[RunConfig],
    pairs: list[tuple[Scheme, str]],
    checkpoint_root: Path,
    note: Callable[[str], None],
) -> dict[str, int]:
    """Every (scheme, method) of ``pairs`` on every finished run of ``runs`` not yet stored, on the
    device each run trained with.

    Returns counts: ``quantized`` (stored now or before) and ``quantize_failed``.
    """
    known = store.quantization_keys()
    status = {row["id"]: row["status"] for row in store.runs()}
    stored, failed = 0, 0
    for run in runs:
        if status.get(run.run_id) != "finished":
            continue
        for scheme, method in pairs:
            if (run.run_id, scheme.key, method) in known:
                stored += 1
                continue
            try:
                checkpoint = checkpoint_root / run.run_id / "checkpoint.pt"
                quantize_run(store, run.run_id, scheme, method, checkpoint, device=run.train.device)
                stored += 1
            except KeyboardInterrupt:
                raise
            except Exception as error:  # reported, and the stage goes on
                failed += 1
                note(f"quantising {run.run_id} with {scheme.name}/{method} failed: {type(error).__name__}: {error}")
    return {"quantized": stored, "quantize_failed": failed}
