"""Background jobs of the HTTP service (plans, fits): queued in the run store, run one at a time,
each in its own process so that it can be cancelled and cannot take the server down with it.

Each job's request, status and result live in the run store (:meth:`RunStore.submit_job` and
its neighbours), so a job interrupted by a restart (or a ``kill -9``) runs again and its result
can be fetched after one; a result is written in one transaction, never in part.

The job processes come from a fork server that has already imported the planner and the fitting
engine, so a job starts in milliseconds, from a single-threaded parent (forking the threaded
server itself could deadlock). A job process is the leader of its own process group, so a
cancel stops it with every helper it started (the bootstrap's workers), and it stops itself when
the server dies.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import multiprocessing
import os
import signal
import sys
import threading
import uuid
from typing import Any

from scaling.errors import UserError
from scaling.runs.store import RunStore

ACTIVE = ("pending", "running")
PRELOAD = ["search.app.job_handlers"]  # imported once by the fork server, not by every job
JOB_NICENESS = 10  # jobs (and the bootstrap's workers, which inherit it) yield the cores to requests


class QueueFull(Exception):
    """The queue holds its limit of pending and running jobs (the service answers 429)."""


class JobRunner:
    """Runs stored jobs one at a time, each in a child process, by kind through ``handlers``.

    Args:
        store: The run store holding the jobs.
        handlers: Each kind's handler as ``"module:function"`` (imported in the job's process).
        queue_limit: The most jobs pending or running at once; a submit past it raises :class:`QueueFull`.
        poll_s: How often the runner checks a running job for a cancel.
    """

    def __init__(self, store: RunStore, handlers: dict[str, str], queue_limit: int = 32, poll_s: float = 0.2) -> None:
        self.store, self.handlers, self.queue_limit, self.poll_s = store, handlers, queue_limit, poll_s
        self.wake = threading.Event()
        self.submitting = threading.Lock()  # count and insert as one step
        self.thread = threading.Thread(target=self._loop, daemon=True, name="moeplan-jobs")
        self.context = _context()

    def start(self) -> None:
        self.store.requeue_running_jobs()
        self.thread.start()

    def check_room(self) -> None:
        """Raise :class:`QueueFull` now, before a submission's checks cost anything."""
        active = len(self.store.jobs(ACTIVE))
        if active >= self.queue_limit:
            raise QueueFull(f"the job queue is full ({active} of {self.queue_limit} pending or running)")

    def submit(self, kind: str, request: dict[str, Any]) -> str:
        if kind not in self.handlers:
            raise UserError(f"unknown job kind {kind!r}")
        with self.submitting:
            active = len(self.store.jobs(ACTIVE))
            if active >= self.queue_limit:
                raise QueueFull(f"the job queue is full ({active} of {self.queue_limit} pending or running)")
            job_id = uuid.uuid4().hex
            self.store.submit_job(job_id, kind, request)
        self.wake.set()
        return job_id

    def get(self, job_id: str, kind: str | None = None) -> dict[str, Any] | None:
        job = self.store.job(job_id)
        return None if job is None or (kind is not None and job["kind"] != kind) else job

    def list(self, statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        return self.store.jobs(statuses)

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending or running job (a running one's process is stopped); False if it has ended."""
        cancelled = self.store.cancel_job(job_id)
        self.wake.set()
        return cancelled

    # --- the runner thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        if self.context.get_start_method() == "forkserver":  # start it now: its imports take seconds
            with contextlib.suppress(Exception):
                from multiprocessing import forkserver

                forkserver.ensure_running()
        while True:
            try:
                job = self.store.take_next_job()
            except Exception as error:  # a store hiccup must not kill the runner: retry shortly
                print(f"moeplan jobs: cannot read the queue: {error}", file=sys.stderr)
                job = None
            if job is None:
                self.wake.wait(timeout=1.0)
                self.wake.clear()
                continue
            try:
                self._run(job)
            except Exception as error:  # the runner outlives any one job, which ends as failed
                print(f"moeplan jobs: job {job['id']} could not run: {error}", file=sys.stderr)
                with contextlib.suppress(Exception):
                    self.store.finish_job(job["id"], "failed", error=f"could not run: {type(error).__name__}")

    def _run(self, job: dict[str, Any]) -> None:
        process = self.context.Process(
            target=run_job,
            args=(self.store.url, job["id"], self.handlers[job["kind"]], job["request"], os.getpid()),
            daemon=False,
            name=f"moeplan-job-{job['id'][:8]}",
        )
        process.start()
        while process.is_alive():
            process.join(self.poll_s)
            if process.is_alive() and self._status(job["id"]) != "running":  # cancelled meanwhile
                _stop(process)
        if process.exitcode != 0:  # killed or crashed before recording an end: record one
            reason = f"signal {-process.exitcode}" if process.exitcode < 0 else f"exit code {process.exitcode}"
            self.store.finish_job(job["id"], "failed", error=f"the job's process ended with {reason}")

    def _status(self, job_id: str) -> str | None:
        job = self.store.job(job_id)
        return None if job is None else job["status"]


def run_job(store_url: str, job_id: str, handler: str, request: dict[str, Any], server_pid: int | None = None) -> None:
    """A job's process: run the handler and record its result (or its error) in the store."""
    with contextlib.suppress(OSError):
        os.setpgrp()  # its own group: a cancel stops its helpers too
    with contextlib.suppress(OSError):
        os.nice(JOB_NICENESS)  # below the server's requests: a plan must not queue predictions
    if server_pid is not None:
        _die_with(server_pid)
    store = RunStore(store_url)
    module, _, function = handler.partition(":")
    try:
        result = getattr(importlib.import_module(module), function)(request)
    except UserError as error:
        store.finish_job(job_id, "failed", error=" ".join(str(error).split()))
    except Exception as error:  # a job's failure is its result, not the server's
        store.finish_job(job_id, "failed", error=f"{type(error).__name__}: {' '.join(str(error).split())}")
    else:
        store.finish_job(job_id, "finished", result=plain(result))


def plain(value: Any) -> Any:
    """A JSON-ready copy: numpy scalars as Python numbers, NaN and infinities as null (JSON has neither)."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _die_with(server_pid: int, every_s: float = 1.0) -> None:
    """End this job's process group when the server is gone (a ``kill -9`` leaves no orphan working);
    the restarted server runs the job again from the store.

    A timer signal, not a thread: the job stays single-threaded, so the bootstrap may fork its
    workers (forking a threaded process can deadlock, so it would spawn them, seconds slower).
    """

    def check(_signum, _frame) -> None:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            if os.getpgrp() == os.getpid():  # its own group: the job and its helpers, nothing else
                os.killpg(os.getpgrp(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        except PermissionError:  # alive, under another user (a reused pid): keep watching
            pass

    signal.signal(signal.SIGALRM, check)
    signal.setitimer(signal.ITIMER_REAL, every_s, every_s)


def _stop(process: multiprocessing.process.BaseProcess, grace_s: float = 2.0) -> None:
    """SIGTERM the job's process group, then SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):  # not its own group yet: the process alone
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
        process.join(grace_s)
        if not process.is_alive():
            return


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        return context
    return multiprocessing.get_context("spawn")
