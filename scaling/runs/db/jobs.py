"""The service's background jobs (plans, fits): queued, taken, finished or cancelled."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import insert, select, update

from scaling.runs.db.core import StoreCore
from scaling.runs.db.schema import jobs_table


class JobRepository:
    """The job queue in the store behind ``core``."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    def submit(self, job_id: str, kind: str, request: dict[str, Any]) -> None:
        with self.core.engine.begin() as connection:
            connection.execute(
                insert(jobs_table).values(
                    id=job_id, kind=kind, status="pending", request=json.dumps(request), created_at=time.time()
                )
            )

    def get(self, job_id: str) -> dict[str, Any] | None:
        """A job's id, kind, status, result (decoded) and error, or None."""
        with self.core.engine.connect() as connection:
            row = connection.execute(select(jobs_table).where(jobs_table.c.id == job_id)).mappings().first()
        return None if row is None else _job_view(row)

    def list(self, statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Jobs (oldest first), without their results; only those in ``statuses`` when given."""
        query = select(jobs_table).order_by(jobs_table.c.created_at)
        if statuses is not None:
            query = query.where(jobs_table.c.status.in_(statuses))
        with self.core.engine.connect() as connection:
            return [_job_view(row, with_result=False) for row in connection.execute(query).mappings()]

    def take_next(self) -> dict[str, Any] | None:
        """Mark the oldest pending job running and return it with its request (decoded), or None."""
        with self.core.engine.begin() as connection:
            query = select(jobs_table).where(jobs_table.c.status == "pending").order_by(jobs_table.c.created_at)
            row = connection.execute(query).mappings().first()
            if row is None:
                return None
            taken = connection.execute(
                update(jobs_table)
                .where(jobs_table.c.id == row["id"], jobs_table.c.status == "pending")
                .values(status="running")
            )
            if taken.rowcount != 1:  # cancelled in between
                return None
        return {"id": row["id"], "kind": row["kind"], "request": json.loads(row["request"])}

    def finish(self, job_id: str, status: str, result: Any = None, error: str | None = None) -> None:
        """Record a job's end; a job cancelled meanwhile stays cancelled."""
        with self.core.engine.begin() as connection:
            connection.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, jobs_table.c.status == "running")
                .values(
                    status=status,
                    result=None if result is None else json.dumps(result),
                    error=error,
                    finished_at=time.time(),
                )
            )

    def requeue_running(self) -> None:
        """Jobs a restart interrupted become pending again."""
        with self.core.engine.begin() as connection:
            connection.execute(update(jobs_table).where(jobs_table.c.status == "running").values(status="pending"))

    def cancel(self, job_id: str) -> bool:
        """Cancel a pending or running job; False if it does not exist or has ended."""
        with self.core.engine.begin() as connection:
            result = connection.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, jobs_table.c.status.in_(("pending", "running")))
                .values(status="cancelled", finished_at=time.time())
            )
        return result.rowcount == 1


def _job_view(row, with_result: bool = True) -> dict[str, Any]:
    view = {
        "id": row["id"],
        "kind": row["kind"],
        "status": row["status"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "error": row["error"],
    }
    if with_result:
        view["result"] = json.loads(row["result"]) if row["result"] else None
    return view
