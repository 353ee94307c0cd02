"""Background jobs of the HTTP service: a thread that runs them one at a time.

Each job's request, status and result live in the run store (:meth:`RunStore.submit_job` and
its neighbours), so a job interrupted by a restart runs again and its result can be fetched
after one.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

from scaling.runs.store import RunStore

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class JobRunner:
    """Runs stored jobs one at a time on a daemon thread, by kind through ``handlers``."""

    def __init__(self, store: RunStore, handlers: dict[str, Handler]) -> None:
        self.store, self.handlers = store, handlers
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self.store.requeue_running_jobs()
        self.thread.start()

    def submit(self, kind: str, request: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        self.store.submit_job(job_id, kind, request)
        self.wake.set()
        return job_id

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self.store.job(job_id)

    def _loop(self) -> None:
        while True:
            job = self.store.take_next_job()
            if job is None:
                self.wake.wait(timeout=1.0)
                self.wake.clear()
                continue
            try:
                result = self.handlers[job["kind"]](job["request"])
                self.store.finish_job(job["id"], "finished", result=result)
            except Exception as failure:  # a job failure is the job's result, not the server's
                self.store.finish_job(job["id"], "failed", error=f"{type(failure).__name__}: {failure}")
