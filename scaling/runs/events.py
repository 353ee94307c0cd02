"""One run as a stream of events: what every executor (local processes, Ray tasks) consumes.

:func:`run_events` trains (or resumes) one run and yields its history, logged points,
checkpoints and final summary; :func:`record_event` applies each to the store. The local
executor calls both in one process (:func:`execute_run`); the Ray executor runs the first in a
task and the second in the driver.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling.runs.spec import RunConfig
from scaling.runs.store import RunStore
from scaling.shape import accounting
from scaling.train.utilisation import is_collapsed, run_summary

_CORPORA: dict[str, Any] = {}


def run_row(run: RunConfig, sweep: str) -> dict[str, Any]:
    """The store's row for a run (before it trains)."""
    spec = run.arch
    return {
        "id": run.run_id,
        "sweep": sweep,
        "config": json.dumps(run.canonical(), sort_keys=True),
        "arch_name": spec.name,
        "total_params": int(accounting.total_params(spec)),
        "active_params": int(accounting.active_params(spec)),
        **accounting.routing_counts(spec),
        "tokens": run.tokens,
        "flops": float(accounting.training_flops_per_token(spec, run.train.seq_len) * run.tokens),
        "seed": run.seed,
        "lr": run.train.lr,
        "stage": run.stage,
    }


def run_events(run: RunConfig, checkpoint_dir: Path, discard_corrupt: bool = False) -> Iterator[tuple[str, Any]]:
    """Train one run, resuming from ``checkpoint_dir``, as a stream of events.

    Yields ``("history", points)`` first (the checkpoint's curve: the truth up to its step),
    then the trainer's ``("point", point)`` and ``("checkpoint", path)`` events, and last
    ``("finished", summary)``. Every executor consumes this one stream. With ``discard_corrupt``
    (a sweep's ``--retry-failed``), an unreadable checkpoint is set aside and the run starts over.
    """
    from scaling.train.corpus import prepare_corpus
    from scaling.train.trainer import Trainer

    if run.corpus not in _CORPORA:
        _CORPORA[run.corpus] = prepare_corpus(run.corpus)
    corpus = _CORPORA[run.corpus]
    trainer = Trainer(run.arch, run.train, corpus, checkpoint_dir=checkpoint_dir, discard_corrupt=discard_corrupt)
    yield "history", list(trainer.history)
    yield from trainer.iterate()
    result = trainer.result()
    measurements = {}
    if run.infer_bench:
        from scaling.train.bench_infer import bench_infer

        bench = bench_infer(run.arch, prompt_tokens=64, decode_tokens=16, repeats=3, device=run.train.device)
        measurements = {k: bench[k] for k in ("prefill_ms", "decode_tokens_per_s", "peak_memory_bytes")}
    yield (
        "finished",
        {
            "final_train_loss": result.final_train_loss,
            "final_val_loss": result.final_val_loss,
            "elapsed_s": result.elapsed_s,
            "measurements": measurements,
            "facts": {
                "epochs": run.tokens / len(corpus.train),
                **run_summary(result.routing),
                **({"collapsed": int(is_collapsed(result.routing))} if result.routing else {}),
            },
        },
    )


def record_event(store: RunStore, run_id: str, owner: str, kind: str, payload: Any, checkpoint: Path) -> None:
    """Apply one event of :func:`run_events` to the store."""
    if kind == "history":
        # Points logged after the checkpoint by a killed attempt are dropped here; they will
        # be logged again, identically.
        store.replace_history(run_id, payload)
    elif kind == "point":
        store.record_point(run_id, payload)
    elif kind == "finished":
        store.finish(
            run_id,
            owner,
            payload["final_train_loss"],
            payload["final_val_loss"],
            payload["elapsed_s"],
            payload["measurements"],
            str(checkpoint),
            payload.get("facts"),
        )


def execute_run(
    store: RunStore, run: RunConfig, owner: str, checkpoint_root: Path, discard_corrupt: bool = False
) -> None:
    """Train one claimed run to the end in this process (resuming from its checkpoint)."""
    folder = checkpoint_root / run.run_id
    try:
        for kind, payload in run_events(run, folder, discard_corrupt):
            record_event(store, run.run_id, owner, kind, payload, folder / "checkpoint.pt")
    except KeyboardInterrupt:
        raise
    except Exception as error:  # recorded, and the sweep goes on
        store.fail(run.run_id, owner, f"{type(error).__name__}: {error}")
