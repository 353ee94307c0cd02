"""The sweep runner: train every run of a spec into the store, idempotently and resumably.

* Finished runs are skipped; interrupted runs (their process gone) resume from their last
  checkpoint; failed runs are recorded with their error and rerun only with ``retry_failed``.
* Work is claimed run by run in the store, so several workers, or several ``moeplan sweep
  run`` processes on one store, never train a run twice.
* ``local`` executor: ``workers`` processes, each with ``cores / workers`` torch threads.
* ``ray`` executor: each run is a Ray task streaming its events back; only this process touches
  the store and the checkpoint folder (see :mod:`scaling.sweep_ray`).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from scaling import accounting
from scaling.errors import UserError
from scaling.store import RunStore, abandoned, owner_id, status_counts
from scaling.sweep_spec import RunConfig, SweepSpec

EXECUTORS = ("local", "ray")
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
        "n_experts": spec.n_routed_experts if spec.is_moe else 1,
        "expansion": spec.n_experts,
        "granularity": spec.granularity,
        "top_k": spec.routed_top_k if spec.is_moe else 1,
        "n_shared_experts": spec.n_shared_experts,
        "tokens": run.tokens,
        "flops": float(accounting.training_flops_per_token(spec, run.train.seq_len) * run.tokens),
    }


def checkpoint_root_for(store: RunStore, override: str | None) -> Path:
    """Where a store's checkpoints live: beside a SQLite file, else one folder per database.

    Run ids are the same in every store, so two stores must never share a checkpoint folder:
    a run would resume from another store's checkpoint.
    """
    if override:
        return Path(override)
    if store.url.startswith("sqlite:///"):
        path = Path(store.url.removeprefix("sqlite:///"))
        return path.parent / f"{path.stem}-checkpoints"
    database = store.engine.url.render_as_string(hide_password=True)
    return Path("runs") / "checkpoints" / hashlib.sha256(database.encode()).hexdigest()[:16]


def run_events(run: RunConfig, checkpoint_dir: Path) -> Iterator[tuple[str, Any]]:
    """Train one run, resuming from ``checkpoint_dir``, as a stream of events.

    Yields ``("history", points)`` first (the checkpoint's curve: the truth up to its step),
    then the trainer's ``("point", point)`` and ``("checkpoint", path)`` events, and last
    ``("finished", summary)``. Every executor consumes this one stream.
    """
    from scaling.data import prepare_corpus
    from scaling.train import Trainer

    if run.corpus not in _CORPORA:
        _CORPORA[run.corpus] = prepare_corpus(run.corpus)
    trainer = Trainer(run.arch, run.train, _CORPORA[run.corpus], checkpoint_dir=checkpoint_dir)
    yield "history", list(trainer.history)
    yield from trainer.iterate()
    result = trainer.result()
    measurements = {}
    if run.infer_bench:
        from scaling.bench_infer import bench_infer

        bench = bench_infer(run.arch, prompt_tokens=64, decode_tokens=16, repeats=3, device=run.train.device)
        measurements = {k: bench[k] for k in ("prefill_ms", "decode_tokens_per_s", "peak_memory_bytes")}
    yield (
        "finished",
        {
            "final_train_loss": result.final_train_loss,
            "final_val_loss": result.final_val_loss,
            "elapsed_s": result.elapsed_s,
            "measurements": measurements,
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
        )


def execute_run(store: RunStore, run: RunConfig, owner: str, checkpoint_root: Path) -> None:
    """Train one claimed run to the end in this process (resuming from its checkpoint)."""
    folder = checkpoint_root / run.run_id
    try:
        for kind, payload in run_events(run, folder):
            record_event(store, run.run_id, owner, kind, payload, folder / "checkpoint.pt")
    except KeyboardInterrupt:
        raise
    except Exception as error:  # recorded, and the sweep goes on
        store.fail(run.run_id, owner, f"{type(error).__name__}: {error}")


def _work(url: str, runs: list[RunConfig], retry_failed: bool, checkpoint_root: str) -> int:
    """A worker's loop: claim and train runs until none is left. Returns runs trained."""
    store = RunStore(url)
    owner, trained = owner_id(), 0
    for run in runs:
        if store.claim(run.run_id, owner, retry_failed):
            execute_run(store, run, owner, Path(checkpoint_root))
            trained += 1
    return trained


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):  # die with the sweep process, even on SIGKILL
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_sweep(
    spec: SweepSpec,
    store_url: str | None = None,
    workers: int | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    retry_failed: bool = False,
    quiet: bool = False,
    checkpoint_dir: str | None = None,
) -> dict[str, Any]:
    """Run a sweep to completion and return the store's counts for it."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    cluster = None
    if executor == "ray":  # connect first: an unreachable cluster fails before the store changes
        from scaling.sweep_ray import RayCluster

        cluster = RayCluster.connect(ray_address, workers)
    store = RunStore(store_url)  # fails here, before any training, if the URL is bad
    added = store.register_sweep(spec.name, spec.text, [run_row(run, spec.name) for run in spec.runs])
    root = checkpoint_root_for(store, checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    progress = SweepProgress(store, spec, quiet)
    progress.start(added)
    started = time.perf_counter()
    workers = workers or 1
    if cluster is not None:
        try:
            cluster.run(store, spec.runs, retry_failed, root, progress.update)
        finally:
            cluster.close()
    elif workers == 1:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        owner = owner_id()
        for run in spec.runs:
            if store.claim(run.run_id, owner, retry_failed):
                execute_run(store, run, owner, root)
            progress.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(threads,)) as pool:
            futures = [pool.submit(_work, store.url, spec.runs, retry_failed, str(root)) for _ in range(workers)]
            while not all(f.done() for f in futures):
                progress.update()
                time.sleep(1.0)
            for future in futures:
                future.result()
    progress.finish()
    counts = store.counts(spec.name, progress.run_ids)
    return {
        "sweep": spec.name,
        "runs": len(spec.runs),
        "skipped_invalid": len(spec.skipped),
        "wall_s": time.perf_counter() - started,
        **counts,
    }


def stale_runs(store: RunStore, spec: SweepSpec) -> list[dict[str, Any]]:
    """Stored runs of the spec's sweep that the spec no longer produces.

    They appear when a spec, or a default it relies on, changes: the run ids (hashes of the
    full config) change with it.
    """
    current = spec.run_ids
    return [row for row in store.runs(spec.name) if row["id"] not in current]


def prune_sweep(spec: SweepSpec, store_url: str | None = None, checkpoint_dir: str | None = None) -> list[str]:
    """Delete the stale runs of a sweep (see :func:`stale_runs`) and their checkpoints; returns their ids."""
    store = RunStore(store_url, create=False)
    stale = stale_runs(store, spec)
    now = time.time()
    running = [
        row["id"] for row in stale if row["status"] == "running" and not abandoned(row["owner"], row["heartbeat"], now)
    ]
    if running:
        raise UserError(f"{len(running)} stale runs are running (e.g. {running[0]}); prune when the sweep is idle")
    stale_ids = [row["id"] for row in stale]
    store.delete_runs(stale_ids)
    root = checkpoint_root_for(store, checkpoint_dir)
    for run_id in stale_ids:
        shutil.rmtree(root / run_id, ignore_errors=True)
    return stale_ids


class SweepProgress:
    """A live view on stderr (rich) of the sweep: done, running, failed, ETA and latest loss."""

    def __init__(self, store: RunStore, spec: SweepSpec, quiet: bool) -> None:
        self.store, self.spec, self.quiet = store, spec, quiet
        self.run_ids = spec.run_ids
        self.progress = None
        self.task = None

    def start(self, added: int) -> None:
        counts = self.store.counts(self.spec.name, self.run_ids)
        message = (
            f"sweep {self.spec.name}: {len(self.spec.runs)} runs ({added} new, {counts['finished']} "
            f"finished, {counts['failed']} failed earlier)"
        )
        stale = len(stale_runs(self.store, self.spec))
        if stale:
            message += f"; {stale} stored runs are no longer in the spec (moeplan runs prune SPEC removes them)"
        print(message, file=sys.stderr)
        if self.quiet:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[latest]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            self.spec.name, total=len(self.spec.runs), latest="", completed=counts["finished"] + counts["failed"]
        )

    def update(self) -> None:
        if self.quiet:
            return
        rows = [row for row in self.store.runs(self.spec.name) if row["id"] in self.run_ids]
        counts = status_counts(rows)
        done = counts["finished"] + counts["failed"]
        latest = ""
        running = [row for row in rows if row["status"] == "running"]
        if running:
            points = self.store.metrics(running[0]["id"])
            if points:
                latest = (
                    f"running {running[0]['arch_name']}: step {points[-1]['step']} loss {points[-1]['train_loss']:.3f}"
                )
        self.progress.update(self.task, completed=done, latest=f"{counts['failed']} failed  {latest}")

    def finish(self) -> None:
        if self.progress is not None:
            self.update()
            self.progress.stop()
        counts = self.store.counts(self.spec.name, self.run_ids)
        print(
            f"sweep {self.spec.name}: {counts['finished']} finished, {counts['failed']} failed, "
            f"{counts['pending'] + counts['running']} left",
            file=sys.stderr,
        )
