"""The sweep runner: train every run of a spec into the store, idempotently and resumably.

* Finished runs are skipped; interrupted runs (their process gone) resume from their last
  checkpoint; failed runs are recorded with their error and rerun only with ``retry_failed``.
* Work is claimed run by run in the store, so several workers, or several ``moeplan sweep
  run`` processes on one store, never train a run twice.
* ``local`` executor: ``workers`` processes, each with ``cores / workers`` torch threads.
* ``ray`` executor: each run is a Ray task streaming its events back; only this process touches
  the store and the checkpoint folder (see :mod:`scaling.runs.ray_executor`).
* ``[quantize]``: once the runs are done, every finished run is quantised with every (scheme,
  method) pair the store does not hold yet (:mod:`scaling.runs.quantize`), in this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from scaling.errors import UserError
from scaling.runs.events import execute_run, run_row
from scaling.runs.spec import RunConfig, SweepSpec
from scaling.runs.store import RunStore, abandoned, owner_id, status_counts

EXECUTORS = ("local", "ray")


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


def checkpoint_of(store: RunStore, run_id: str, checkpoint_dir: str | None = None) -> Path:
    """A finished run's final checkpoint: under ``checkpoint_dir`` when given, else where the
    store recorded it, else in the store's checkpoint folder."""
    recorded = None if checkpoint_dir else store.artifact(run_id)
    return Path(recorded) if recorded else checkpoint_root_for(store, checkpoint_dir) / run_id / "checkpoint.pt"


def _work(url: str, runs: list[RunConfig], retry_failed: bool, checkpoint_root: str) -> int:
    """A worker's loop: claim and train runs until none is left. Returns runs trained."""
    store = RunStore(url)
    owner, trained = owner_id(), 0
    for run in runs:
        if store.claim(run.run_id, owner, retry_failed):
            execute_run(store, run, owner, Path(checkpoint_root), discard_corrupt=retry_failed)
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
    """Run a sweep to completion and return the store's counts for it.

    A spec with ``[lr_search]`` runs in two stages: its tuning runs first (waiting for any
    that another sweeper is training), then its main runs at the chosen learning rates.
    """
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    from scaling.train.corpus import check_corpus

    for corpus in sorted({run.corpus for run in (*spec.lr_stage, *spec.planned, *spec.runs)}):
        try:
            check_corpus(corpus)
        except UserError as error:
            raise UserError(f"sweep spec: run.corpus: {error}") from None
    cluster = None
    if executor == "ray":  # connect first: an unreachable cluster fails before the store changes
        from scaling.runs.ray_executor import RayCluster

        cluster = RayCluster.connect(ray_address, workers)
    store = RunStore(store_url)  # fails here, before any training, if the URL is bad
    root = checkpoint_root_for(store, checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    progress = SweepProgress(store, spec, quiet)
    started = time.perf_counter()
    learning_rates: dict[str, float] = {}
    try:
        if spec.lr_stage:
            progress.start(store.register_sweep(spec.name, spec.text, _rows(spec.lr_stage, spec.name)), spec.lr_stage)
            _execute_until_settled(store, spec.lr_stage, cluster, workers or 1, retry_failed, root, progress)
            chosen = choose_learning_rates(store, spec)
            spec.resolve(chosen)
            learning_rates = {family_label(family): lr for family, lr in chosen.items()}
            progress.note("learning rates: " + ", ".join(f"{k} {v:g}" for k, v in learning_rates.items()))
        progress.start(store.register_sweep(spec.name, spec.text, _rows(spec.runs, spec.name)), spec.runs)
        _execute_until_settled(store, spec.runs, cluster, workers or 1, retry_failed, root, progress)
    finally:
        if cluster is not None:
            cluster.close()
    progress.finish()
    quantized = {}
    if spec.quantize:  # a last stage: every finished run with every (scheme, method) not yet stored
        from scaling.runs.quantize import quantize_finished

        progress.note(f"quantising finished runs: {len(spec.quantize)} (scheme, method) pairs each")
        quantized = quantize_finished(store, spec.runs, spec.quantize, root, progress.note)
    counts = store.counts(spec.name, spec.run_ids)
    summary = {
        "sweep": spec.name,
        "runs": len(spec.lr_stage) + len(spec.runs),
        "skipped_invalid": len(spec.skipped),
        "wall_s": time.perf_counter() - started,
        **counts,
        **quantized,
    }
    if learning_rates:
        summary["learning_rates"] = learning_rates
    return summary


def _rows(runs: list[RunConfig], sweep: str) -> list[dict[str, Any]]:
    return [run_row(run, sweep) for run in runs]


def _execute(
    store: RunStore,
    runs: list[RunConfig],
    cluster: Any,
    workers: int,
    retry_failed: bool,
    root: Path,
    progress: SweepProgress,
) -> None:
    """Claim and train every claimable run of ``runs`` with the chosen executor."""
    if cluster is not None:
        cluster.run(store, runs, retry_failed, root, progress.update)
    elif workers == 1:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        owner = owner_id()
        for run in runs:
            if store.claim(run.run_id, owner, retry_failed):
                execute_run(store, run, owner, root, discard_corrupt=retry_failed)
            progress.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(threads,)) as pool:
            futures = [pool.submit(_work, store.url, runs, retry_failed, str(root)) for _ in range(workers)]
            while not all(f.done() for f in futures):
                progress.update()
                time.sleep(1.0)
            for future in futures:
                future.result()


def _execute_until_settled(store, runs, cluster, workers, retry_failed, root, progress, poll_s: float = 5.0) -> None:
    """:func:`_execute`, then wait for the runs other sweepers hold (taking over abandoned ones)."""
    ids = {run.run_id for run in runs}
    while True:
        _execute(store, runs, cluster, workers, retry_failed, root, progress)
        rows = [row for row in store.runs() if row["id"] in ids]
        counts = status_counts(rows)
        if counts["pending"] + counts["running"] == 0:
            return
        if not counts["running"]:  # a claim lost to a race: the run is pending again, take it
            time.sleep(min(poll_s, 0.5))
            continue
        owners = sorted({row["owner"] for row in rows if row["status"] == "running"})
        progress.note(
            f"waiting for {counts['running']} run(s) that another sweeper is training ({', '.join(owners)}); "
            "they count here once finished, and are taken over if that sweeper dies"
        )
        time.sleep(poll_s)


def family_label(family: tuple[int, ...]) -> str:
    """``E8-G1-k1-S0`` for the family (n_experts, granularity, top_k, n_shared_experts)."""
    return "E{}-G{}-k{}-S{}".format(*family)


def choose_learning_rates(store: RunStore, spec: SweepSpec) -> dict[tuple[int, ...], float]:
    """Each family's learning rate with the lowest mean final validation loss over its seeds.

    A failed tuning run (a divergence, say) counts as infinitely bad, so a learning rate that
    failed on any seed is never chosen while another completed on every seed.
    """
    rows = {row["id"]: row for row in store.runs(spec.name)}
    losses: dict[tuple[int, ...], dict[float, list[float]]] = {}
    for run in spec.lr_stage:
        row = rows[run.run_id]
        loss = row["final_val_loss"] if row["status"] == "finished" else float("inf")
        losses.setdefault(run.family, {}).setdefault(run.train.lr, []).append(loss)
    chosen = {}
    for family, by_lr in losses.items():
        means = {lr: sum(values) / len(values) for lr, values in by_lr.items()}
        best = min(means, key=means.get)
        if means[best] == float("inf"):
            raise RuntimeError(
                f"every learning rate of the tuning grid failed for family {family_label(family)}; "
                "see 'moeplan runs list' for their errors, and widen [lr_search] grid"
            )
        chosen[family] = best
    return chosen


def stale_runs(store: RunStore, spec: SweepSpec) -> list[dict[str, Any]]:
    """Stored runs of the spec's sweep that the spec no longer produces.

    They appear when a spec, or a default it relies on, changes: the run ids (hashes of the
    full config) change with it.
    """
    if spec.lr_stage and not spec.runs:  # main runs are known once the tuning runs all ended
        tuning = store.counts(spec.name, {run.run_id for run in spec.lr_stage})
        if tuning["pending"] + tuning["running"] == 0:
            with contextlib.suppress(RuntimeError, KeyError):
                spec.resolve(choose_learning_rates(store, spec))
    unresolved = bool(spec.lr_stage) and not spec.runs
    current = spec.run_ids
    return [
        row
        for row in store.runs(spec.name)
        if row["id"] not in current and not (unresolved and row["stage"] != "lr_search")
    ]


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
    """A live view on stderr (rich) of the sweep: done, running, failed, ETA and latest loss.

    :meth:`start` begins a stage (the learning-rate search, then the main runs).
    """

    def __init__(self, store: RunStore, spec: SweepSpec, quiet: bool) -> None:
        self.store, self.spec, self.quiet = store, spec, quiet
        self.run_ids: set[str] = set()
        self.progress = None
        self.task = None

    def start(self, added: int, runs: list[RunConfig]) -> None:
        self._stop()
        self.run_ids = {run.run_id for run in runs}
        counts = self.store.counts(self.spec.name, self.run_ids)
        stage = "learning-rate search" if runs and runs[0].stage == "lr_search" else "runs"
        message = (
            f"sweep {self.spec.name}: {len(runs)} {stage} ({added} new, {counts['finished']} "
            f"finished, {counts['failed']} failed earlier)"
        )
        stale = len(stale_runs(self.store, self.spec))
        if stale and stage == "runs":
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
            f"{self.spec.name} {stage}", total=len(runs), latest="", completed=counts["finished"] + counts["failed"]
        )

    def note(self, message: str) -> None:
        print(f"sweep {self.spec.name}: {message}", file=sys.stderr)

    def update(self) -> None:
        if self.progress is None:
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

    def _stop(self) -> None:
        if self.progress is not None:
            self.update()
            self.progress.stop()
            self.progress = None

    def finish(self) -> None:
        self._stop()
        counts = self.store.counts(self.spec.name, self.spec.run_ids)
        print(
            f"sweep {self.spec.name}: {counts['finished']} finished, {counts['failed']} failed, "
            f"{counts['pending'] + counts['running']} left",
            file=sys.stderr,
        )
