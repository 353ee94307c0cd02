"""Measurements: named numbers under a key (a run id, or ``shape:<hash>`` for the latency cache)."""

from __future__ import annotations

import importlib

from sqlalchemy import insert, select

from scaling.runs.db.core import StoreCore
from scaling.runs.db.schema import measurements_table

LATENCY_PREFIX = "shape:"


class MeasurementRepository:
    """Measurements by key, inserted or replaced name by name."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    def record(self, key: str, values: dict[str, float]) -> None:
        """Measurements not tied to a training run (e.g. a shape benchmarked by the search)."""
        self.core.insert_once(lambda connection: put_measurements(connection, key, values))

    def get(self, run_id: str) -> dict[str, float]:
        with self.core.engine.connect() as connection:
            rows = connection.execute(select(measurements_table).where(measurements_table.c.run_id == run_id))
            return {row.key: row.value for row in rows}


class LatencyCache:
    """Measured latencies of shapes (``decode_ms``, ``prefill_ms``), keyed by a hash of the shape."""

    def __init__(self, measurements: MeasurementRepository) -> None:
        self.measurements = measurements

    def get(self, shape_hash: str) -> dict[str, float]:
        return self.measurements.get(LATENCY_PREFIX + shape_hash)

    def put(self, shape_hash: str, values: dict[str, float]) -> None:
        self.measurements.record(LATENCY_PREFIX + shape_hash, values)


def put_measurements(connection, key: str, values: dict[str, float]) -> None:
    """Insert or replace named measurements under ``key`` (a run id, or ``shape:<hash>``).

    An upsert where the database has one (PostgreSQL, SQLite): a delete and an insert would let
    two processes measuring the same shape collide on the key, however often they retried.
    """
    dialect = connection.dialect.name
    upsert = dialect in ("postgresql", "sqlite")
    dialect_insert = importlib.import_module(f"sqlalchemy.dialects.{dialect}").insert if upsert else None
    for name, value in values.items():
        row = {"run_id": key, "key": name, "value": float(value)}
        if upsert:
            statement = dialect_insert(measurements_table).values(**row)
            statement = statement.on_conflict_do_update(
                index_elements=["run_id", "key"], set_={"value": statement.excluded.value}
            )
            connection.execute(statement)
            continue
        connection.execute(
            measurements_table.delete().where(measurements_table.c.run_id == key, measurements_table.c.key == name)
        )
        connection.execute(insert(measurements_table).values(**row))
