"""Quantisations of finished runs: what each scheme and method cost in loss."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import insert, select

from scaling.runs.db.core import StoreCore
from scaling.runs.db.schema import QUANTIZATION_FIELDS, quantization_table


class QuantizationRepository:
    """Stored quantisations, one per (run, scheme, method)."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    def record(self, run_id: str, result: dict[str, Any]) -> None:
        """Store (or replace) one quantisation of a run, in one transaction: a process killed
        before it commits leaves nothing, and the run's own rows are never touched."""
        row = {name: result.get(name) for name in QUANTIZATION_FIELDS}
        for name in ("scheme_spec", "part_bytes"):
            if not isinstance(row[name], str):
                row[name] = json.dumps(row[name], sort_keys=True)
        if row["symmetric"] is not None:
            row["symmetric"] = int(row["symmetric"])
        key = (quantization_table.c.run_id == run_id) & (quantization_table.c.scheme_key == row["scheme_key"])
        key = key & (quantization_table.c.method == row["method"])

        def write(connection) -> None:
            connection.execute(quantization_table.delete().where(key))
            connection.execute(insert(quantization_table).values(run_id=run_id, created_at=time.time(), **row))

        self.core.insert_once(write)

    def list(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Stored quantisations (``scheme_spec`` and ``part_bytes`` decoded), by run, scheme, method."""
        query = select(quantization_table).order_by(
            quantization_table.c.run_id, quantization_table.c.scheme, quantization_table.c.method
        )
        if run_id is not None:
            query = query.where(quantization_table.c.run_id == run_id)
        with self.core.engine.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        for row in rows:
            row["scheme_spec"] = json.loads(row["scheme_spec"] or "{}")
            row["part_bytes"] = json.loads(row["part_bytes"] or "{}")
            row["symmetric"] = None if row["symmetric"] is None else bool(row["symmetric"])
        return rows

    def keys(self) -> set[tuple[str, str, str]]:
        """``(run_id, scheme_key, method)`` of every stored quantisation."""
        columns = (quantization_table.c.run_id, quantization_table.c.scheme_key, quantization_table.c.method)
        with self.core.engine.connect() as connection:
            return {tuple(row) for row in connection.execute(select(*columns))}
