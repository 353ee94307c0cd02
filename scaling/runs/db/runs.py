"""Runs and their events: sweeps, runs, claims, logged points, routing, artifacts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert, select, update

from scaling.errors import UserError
from scaling.runs.db.core import StoreCore
from scaling.runs.db.leases import abandoned
from scaling.runs.db.measurements import put_measurements
from scaling.runs.db.schema import (
    V3_RUN_COLUMNS,
    artifacts_table,
    measurements_table,
    metrics_table,
    quantization_table,
    routing_table,
    runs_table,
    sweeps_table,
)

STATUSES = ("pending", "running", "finished", "failed")


class RunRepository:
    """Sweeps, runs and their logged points, in the store behind ``core``."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    def register_sweep(self, name: str, spec_text: str, runs: list[dict[str, Any]]) -> int:
        """Record a sweep and its runs (as pending); runs already known are left as they are."""

        def register(connection) -> int:
            if connection.execute(select(sweeps_table.c.name).where(sweeps_table.c.name == name)).first() is None:
                connection.execute(insert(sweeps_table).values(name=name, spec=spec_text, created_at=time.time()))
            known = set(connection.execute(select(runs_table.c.id)).scalars())
            new = [row for row in runs if row["id"] not in known]
            for row in new:
                connection.execute(
                    insert(runs_table).values(**row, status="pending", created_at=time.time(), attempts=0)
                )
            return len(new)

        return self.core.insert_once(register)

    def claim(self, run_id: str, owner: str, retry_failed: bool = False) -> bool:
        """Atomically take a run: pending, failed (with ``retry_failed``) or abandoned running."""
        now = time.time()
        with self.core.engine.begin() as connection:
            row = connection.execute(select(runs_table).where(runs_table.c.id == run_id)).mappings().first()
            if row is None or row["status"] == "finished":
                return False
            claimable = row["status"] == "pending" or (row["status"] == "failed" and retry_failed)
            if row["status"] == "running" and abandoned(row["owner"], row["heartbeat"], now):
                claimable = True
            if not claimable:
                return False
            result = connection.execute(
                update(runs_table)
                .where(
                    runs_table.c.id == run_id,
                    runs_table.c.status == row["status"],
                    runs_table.c.owner.is_(None) if row["owner"] is None else runs_table.c.owner == row["owner"],
                )
                .values(status="running", owner=owner, heartbeat=now, error=None, attempts=(row["attempts"] or 0) + 1)
            )
            return result.rowcount == 1

    def record_point(self, run_id: str, point: dict[str, Any]) -> None:
        """Store one logged point (replacing a point at the same step from before a resume)."""
        with self.core.engine.begin() as connection:
            for table in (metrics_table, routing_table):
                connection.execute(table.delete().where(table.c.run_id == run_id, table.c.step >= point["step"]))
            _insert_point(connection, run_id, point)
            connection.execute(update(runs_table).where(runs_table.c.id == run_id).values(heartbeat=time.time()))

    def replace_history(self, run_id: str, points: list[dict[str, Any]]) -> None:
        """Make the stored curve exactly ``points`` (a resumed checkpoint's history), in one transaction."""
        with self.core.engine.begin() as connection:
            for table in (metrics_table, routing_table):
                connection.execute(table.delete().where(table.c.run_id == run_id))
            for point in points:
                _insert_point(connection, run_id, point)

    def finish(
        self,
        run_id: str,
        owner: str,
        final_train_loss: float,
        final_val_loss: float,
        elapsed_s: float,
        measurements: dict[str, float] | None = None,
        checkpoint: str | None = None,
        facts: dict[str, Any] | None = None,
    ) -> None:
        """Mark a run finished with its final losses; ``facts`` fills the v3 columns (epochs,
        expert utilisation, collapsed)."""
        facts = {k: v for k, v in (facts or {}).items() if k in V3_RUN_COLUMNS}
        with self.core.engine.begin() as connection:
            put_measurements(connection, run_id, measurements or {})
            if checkpoint:
                connection.execute(artifacts_table.delete().where(artifacts_table.c.run_id == run_id))
                connection.execute(insert(artifacts_table).values(run_id=run_id, kind="checkpoint", path=checkpoint))
            connection.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id, runs_table.c.owner == owner)
                .values(
                    status="finished",
                    final_train_loss=final_train_loss,
                    final_val_loss=final_val_loss,
                    elapsed_s=elapsed_s,
                    finished_at=time.time(),
                    error=None,
                    **facts,
                )
            )

    def fail(self, run_id: str, owner: str, error: str) -> None:
        with self.core.engine.begin() as connection:
            connection.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id, runs_table.c.owner == owner)
                .values(status="failed", error=error[:2000], finished_at=time.time())
            )

    def artifact(self, run_id: str, kind: str = "checkpoint") -> str | None:
        """The path recorded for a run's artifact (its final checkpoint), or None."""
        query = select(artifacts_table.c.path).where(artifacts_table.c.run_id == run_id, artifacts_table.c.kind == kind)
        with self.core.engine.connect() as connection:
            return connection.execute(query).scalar()

    def delete_runs(self, run_ids: list[str]) -> int:
        """Delete runs with their metrics, measurements, quantisations and artifact records, in one transaction."""
        with self.core.engine.begin() as connection:
            for table in (metrics_table, routing_table, measurements_table, quantization_table, artifacts_table):
                connection.execute(table.delete().where(table.c.run_id.in_(run_ids)))
            return connection.execute(runs_table.delete().where(runs_table.c.id.in_(run_ids))).rowcount

    def runs(self, sweep: str | None = None) -> list[dict[str, Any]]:
        query = select(runs_table).order_by(runs_table.c.created_at, runs_table.c.id)
        if sweep is not None:
            query = query.where(runs_table.c.sweep == sweep)
        with self.core.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def run(self, run_id: str) -> dict[str, Any]:
        with self.core.engine.connect() as connection:
            # autoescape: '%', '_' and '\\' in a prefix are characters, not LIKE wildcards
            query = select(runs_table).where(runs_table.c.id.startswith(run_id, autoescape=True))
            rows = connection.execute(query).mappings().all()
        if not rows:
            raise UserError(f"no run with id {run_id!r}; see 'moeplan runs list'")
        if len(rows) > 1:
            raise UserError(f"run id prefix {run_id!r} is ambiguous ({len(rows)} runs); give more characters")
        return dict(rows[0])

    def metrics(self, run_id: str | None = None) -> list[dict[str, Any]]:
        query = select(metrics_table).order_by(metrics_table.c.run_id, metrics_table.c.step)
        if run_id is not None:
            query = query.where(metrics_table.c.run_id == run_id)
        with self.core.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def routing(self, run_id: str) -> list[dict[str, Any]]:
        """Expert utilisation per evaluation and MoE layer (``shares`` decoded), by step then layer."""
        query = (
            select(routing_table)
            .where(routing_table.c.run_id == run_id)
            .order_by(routing_table.c.step, routing_table.c.layer)
        )
        with self.core.engine.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        for row in rows:
            row["shares"] = json.loads(row["shares"])
        return rows

    def counts(self, sweep: str | None = None, run_ids: set[str] | None = None) -> dict[str, int]:
        """Runs per status, in ``sweep`` and (when given) among ``run_ids``."""
        return status_counts(row for row in self.runs(sweep) if run_ids is None or row["id"] in run_ids)


RUN_LIST_KEYS = (
    "id",
    "sweep",
    "stage",
    "status",
    "arch_name",
    "total_params",
    "active_params",
    "n_experts",
    "top_k",
    "granularity",
    "n_routed_experts",
    "routed_top_k",
    "n_shared_experts",
    "tokens",
    "flops",
    "seed",
    "lr",
    "epochs",
    "final_train_loss",
    "final_val_loss",
    "collapsed",
    "error",
)
"""What ``moeplan runs list`` and ``GET /v1/runs`` give for each run."""


def run_listing(row: dict[str, Any]) -> dict[str, Any]:
    """The public view of a stored run (:data:`RUN_LIST_KEYS`; ``collapsed`` as a boolean or None)."""
    listing = {key: row[key] for key in RUN_LIST_KEYS}
    listing["collapsed"] = None if row["collapsed"] is None else bool(row["collapsed"])
    return listing


def status_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Runs per status among ``rows`` (every status present, zero when none)."""
    counts = dict.fromkeys(STATUSES, 0)
    for row in rows:
        counts[row["status"]] += 1
    return counts


POINT_FIELDS = ("step", "tokens", "train_loss", "val_loss", "lr", "elapsed")


def _insert_point(connection, run_id: str, point: dict[str, Any]) -> None:
    connection.execute(insert(metrics_table).values(run_id=run_id, **{k: point[k] for k in POINT_FIELDS}))
    for layer in point.get("routing") or ():
        connection.execute(
            insert(routing_table).values(
                run_id=run_id,
                step=point["step"],
                layer=layer["layer"],
                shares=json.dumps(layer["shares"]),
                **{k: layer[k] for k in ("entropy", "max_over_mean", "dead_fraction", "z_loss")},
            )
        )
