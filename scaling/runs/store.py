"""The run store: every sweep, run, logged point, measurement and artifact, in one database.

SQLAlchemy over SQLite by default (``runs/moeplan.sqlite``, WAL mode), or any SQLAlchemy URL
(PostgreSQL in particular). Each write is one transaction, so a process killed mid-write
leaves no partial row. Runs are claimed with a conditional UPDATE, so any number of sweep
processes can share one store without running anything twice.

Pandas views of a store are in :mod:`scaling.runs.frames`.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError

from scaling.errors import UserError

SCHEMA_VERSION = 5
DEFAULT_URL = "sqlite:///runs/moeplan.sqlite"
STATUSES = ("pending", "running", "finished", "failed")
LEASE_S = 600.0  # a running claim with no heartbeat for this long is taken over

metadata = MetaData()
meta_table = Table("meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text))
VERSION_QUERY = select(meta_table.c.value).where(meta_table.c.key == "schema_version")
sweeps_table = Table(
    "sweeps",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("spec", Text),
    Column("created_at", Float),
)
runs_table = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("sweep", String(200), index=True),
    Column("status", String(16), index=True),
    Column("config", Text),
    Column("arch_name", String(300)),
    Column("total_params", Integer),
    Column("active_params", Integer),
    Column("n_experts", Integer),
    Column("expansion", Integer),
    Column("granularity", Integer),
    Column("top_k", Integer),
    Column("n_shared_experts", Integer),
    Column("tokens", Integer),
    Column("flops", Float),
    Column("final_train_loss", Float),
    Column("final_val_loss", Float),
    Column("error", Text),
    Column("owner", String(200)),
    Column("heartbeat", Float),
    Column("created_at", Float),
    Column("finished_at", Float),
    Column("elapsed_s", Float),
    Column("attempts", Integer, default=0),
    # v3: read off the config at registration (seed, lr, stage) and written at the end (the rest)
    Column("seed", Integer),
    Column("lr", Float),
    Column("stage", String(20)),
    Column("epochs", Float),
    Column("expert_load_entropy", Float),
    Column("expert_load_max_over_mean", Float),
    Column("dead_expert_fraction", Float),
    Column("router_z_loss", Float),
    Column("collapsed", Integer),
    # v4: n_experts and top_k are E and k at G = 1 (as in ArchSpec); these are E*G and k*G
    Column("n_routed_experts", Integer),
    Column("routed_top_k", Integer),
)
metrics_table = Table(
    "metrics",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("tokens", Integer),
    Column("train_loss", Float),
    Column("val_loss", Float),
    Column("lr", Float),
    Column("elapsed", Float),
)
measurements_table = Table(
    "measurements",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("key", String(100), primary_key=True),
    Column("value", Float),
)
routing_table = Table(
    "routing",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("layer", Integer, primary_key=True),
    Column("shares", Text),  # JSON list: each expert's share of the assignments
    Column("entropy", Float),
    Column("max_over_mean", Float),
    Column("dead_fraction", Float),
    Column("z_loss", Float),
)
quantization_table = Table(  # v5: a finished run's checkpoint quantised with a scheme and a method
    "quantization",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("scheme_key", String(32), primary_key=True),  # a hash of the formats (Scheme.key)
    Column("method", String(16), primary_key=True),
    Column("scheme", String(200)),  # its name
    Column("scheme_spec", Text),  # JSON: every part's format
    Column("bits", Integer),  # shared by the quantised parts (16: none quantised; NULL: mixed)
    Column("group_size", Integer),
    Column("symmetric", Integer),
    Column("parts", Text),  # "all", or the quantised parts joined by commas
    Column("loss_before", Float),  # nats/byte, the run's validation windows
    Column("loss_after", Float),
    Column("packed_weight_bytes", BigInteger),
    Column("quantised_params", BigInteger),
    Column("part_bytes", Text),  # JSON: packed bytes per part
    Column("calibration_tokens", Integer),
    Column("eval_tokens", Integer),
    Column("device", String(40)),
    Column("elapsed_s", Float),
    Column("created_at", Float),
)
QUANTIZATION_FIELDS = tuple(c.name for c in quantization_table.columns if c.name not in ("run_id", "created_at"))
jobs_table = Table(  # the service's background jobs (plans, fits)
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(20)),
    Column("status", String(16)),
    Column("request", Text),
    Column("result", Text),
    Column("error", Text),
    Column("created_at", Float),
    Column("finished_at", Float),
)
artifacts_table = Table(
    "artifacts",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("kind", String(50), primary_key=True),
    Column("path", Text),
)


def _add_attempts(connection) -> None:
    """v1 -> v2: count the claims of each run (a run trained twice shows attempts > 1)."""
    if "attempts" not in {c["name"] for c in inspect(connection).get_columns("runs")}:
        connection.execute(text("ALTER TABLE runs ADD COLUMN attempts INTEGER DEFAULT 0"))


V3_RUN_COLUMNS = (
    "seed",
    "lr",
    "stage",
    "epochs",
    "expert_load_entropy",
    "expert_load_max_over_mean",
    "dead_expert_fraction",
    "router_z_loss",
    "collapsed",
)


def _add_run_facts(connection) -> None:
    """v2 -> v3: seed, learning rate, stage, epochs and expert utilisation per run.

    Seed and learning rate are read back from each run's stored config; the rest stay empty for
    runs trained before (their utilisation was never measured). The routing and jobs tables are
    created by ``create_all`` in the same transaction.
    """
    existing = {c["name"] for c in inspect(connection).get_columns("runs")}
    for name in V3_RUN_COLUMNS:
        if name not in existing:
            column_type = runs_table.c[name].type.compile(dialect=connection.dialect)
            connection.execute(text(f"ALTER TABLE runs ADD COLUMN {name} {column_type}"))
    for run_id, config in connection.execute(select(runs_table.c.id, runs_table.c.config)).all():
        train = json.loads(config or "{}").get("train", {})
        connection.execute(
            update(runs_table)
            .where(runs_table.c.id == run_id)
            .values(seed=train.get("seed"), lr=train.get("lr"), stage="main")
        )


def _one_meaning_per_name(connection) -> None:
    """v3 -> v4: ``n_experts`` and ``top_k`` held the physical counts E*G and k*G; they now hold
    E and k, as ArchSpec, plans and ``--arch`` files do, and the physical counts move to
    ``n_routed_experts`` and ``routed_top_k``."""
    existing = {c["name"] for c in inspect(connection).get_columns("runs")}
    for name in ("n_routed_experts", "routed_top_k"):
        if name not in existing:
            connection.execute(text(f"ALTER TABLE runs ADD COLUMN {name} INTEGER"))
    connection.execute(
        update(runs_table).values(
            n_routed_experts=runs_table.c.n_experts,
            routed_top_k=runs_table.c.top_k,
            n_experts=runs_table.c.expansion,
            top_k=runs_table.c.top_k // runs_table.c.granularity,
        )
    )


def _add_quantization(connection) -> None:
    """v4 -> v5: the ``quantization`` table (created by ``create_all`` in the same transaction):
    what quantising each finished run costs in loss, per scheme and method."""


SCHEMA_LOCK_KEY = 0x6D6F65706C616E  # "moeplan": the PostgreSQL advisory lock taken while changing the schema


def lock_schema(connection) -> None:
    """Hold the store's schema lock until this transaction ends.

    PostgreSQL's ``CREATE TABLE IF NOT EXISTS`` is not safe against a concurrent one (the loser
    fails on ``pg_type``), and two processes may both find no schema version and insert it. So
    schema work takes a transaction-scoped advisory lock there, and a write lock (``BEGIN
    IMMEDIATE``, which waits out ``busy_timeout``) on SQLite.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# Migrations from version v to v+1, applied in order by :meth:`RunStore.migrate`.
MIGRATIONS: dict[int, Any] = {
    1: _add_attempts,
    2: _add_run_facts,
    3: _one_meaning_per_name,
    4: _add_quantization,
}


def resolve_url(url: str | None) -> str:
    """``--store`` or ``$MOEPLAN_STORE`` or the default SQLite file; bare paths become SQLite URLs."""
    url = url or os.environ.get("MOEPLAN_STORE") or DEFAULT_URL
    if "://" not in url:
        url = f"sqlite:///{url}"
    if url.startswith(("postgresql://", "postgres://")):  # psycopg 3 is the driver moeplan ships for
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a SQLite connection waits for another's lock


def _set_wal_mode(cursor, timeout_s: float) -> None:
    """Put a SQLite database in WAL mode (persistent: a no-op once any connection did it).

    Processes that open a fresh file at once race to switch it, and the loser gets "database is
    locked" at once: SQLite's busy handler does not wait there. So retry until one has switched it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _is_sqlite_file(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def _in_memory(url: str) -> bool:
    """Whether a SQLite URL names an in-memory database (``sqlite://``, ``sqlite:///``, ``:memory:``)."""
    path, _, query = url.split("://", 1)[1].partition("?")
    return path in ("", "/") or ":memory:" in path or "mode=memory" in query


class RunStore:
    """A handle on one store. Create it, then call its methods; each is one transaction."""

    def __init__(self, url: str | None = None, create: bool = True) -> None:
        self.url = resolve_url(url)
        try:
            self.engine: Engine = self._connect(create)
        except (ArgumentError, ValueError) as error:
            raise UserError(f"cannot use store URL {self.url!r}: {error}") from None
        except ImportError as error:
            raise UserError(
                f"store URL {self.url!r} needs the database driver {error.name!r}: "
                "pip install 'moeplan[postgres]' (or the driver your URL names)"
            ) from None
        except (OperationalError, SQLAlchemyError) as error:
            reason = str(getattr(error, "orig", error)).splitlines()[0]
            raise UserError(f"cannot open store {self.url!r}: {reason}; check --store / MOEPLAN_STORE") from None

    def _connect(self, create: bool) -> Engine:
        if self.url.startswith("sqlite:") and _in_memory(self.url):
            raise UserError(
                f"store {self.url!r} is an in-memory database: it would throw every result away; "
                "give a file, e.g. --store runs/moeplan.sqlite"
            )
        if self.url.startswith("sqlite:///"):
            path = Path(self.url.removeprefix("sqlite:///").split("?", 1)[0])
            if not create and not path.exists():
                raise UserError(f"store {str(path)!r} does not exist; run a sweep first or pass --store")
            if not create and path.is_file() and not _is_sqlite_file(path):  # a read never turns a file into a store
                raise UserError(f"{str(path)!r} holds no moeplan run store (not a SQLite database); check --store")
            if path.is_dir():
                raise UserError(
                    f"store {str(path)!r} is a folder; give a SQLite file, e.g. {str(path / 'moeplan.sqlite')!r}"
                )
            if not path.parent.exists():
                if create and self.url == resolve_url(DEFAULT_URL):  # the default store makes its folder
                    path.parent.mkdir(parents=True, exist_ok=True)
                else:
                    raise UserError(f"cannot create store {str(path)!r}: folder {str(path.parent)!r} does not exist")
        engine = create_engine(self.url, future=True)
        if engine.dialect.name == "sqlite":

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(connection, _record):  # WAL: readers never block the writer
                cursor = connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
                _set_wal_mode(cursor, SQLITE_BUSY_TIMEOUT_S)
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()

        self.engine = engine
        if engine.dialect.name == "sqlite":
            self._quick_check()
        if not create and self._stored_version() is None:  # a read must not turn any file into a store
            raise UserError(f"{self.url!r} holds no moeplan run store (no tables); check --store / MOEPLAN_STORE")
        self.migrate()
        return engine

    def _quick_check(self) -> None:
        """Refuse a damaged SQLite file when it opens, naming it, rather than fail later on a raw SQL error."""
        with self.engine.connect() as connection:
            problems = [row[0] for row in connection.exec_driver_sql("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise UserError(
                f"store {self.url!r} is damaged (SQLite quick_check: {'; '.join(problems)}); restore it from a "
                "backup, or recover what it holds with 'sqlite3 FILE .recover'"
            )

    # --- schema ------------------------------------------------------------------------------
    def schema_version(self) -> int:
        version = self._stored_version()
        if version is None:
            raise UserError(f"store {self.url!r} has lost its tables; open it again to recreate them")
        return version

    def migrate(self) -> None:
        """Bring the store to this moeplan's schema: create missing tables, then apply every
        migration newer than the store's version, all in one transaction that holds the schema
        lock, so processes opening one store at once neither race nor half-migrate. A store
        already at this version and holding every table is only read (it may be on a read-only
        mount)."""
        if self._check_version(self._stored_version()) == SCHEMA_VERSION and not self._missing_tables():
            return
        with self.engine.begin() as connection:
            lock_schema(connection)
            metadata.create_all(connection)
            stored = connection.execute(VERSION_QUERY).scalar()
            if stored is None:
                connection.execute(insert(meta_table).values(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            version = self._check_version(int(stored))
            if version == SCHEMA_VERSION:  # another process migrated it while we waited for the lock
                return
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](connection)
                version += 1
            set_version = update(meta_table).where(meta_table.c.key == "schema_version").values(value=str(version))
            connection.execute(set_version)

    @staticmethod
    def _check_version(version: int | None) -> int | None:
        if version is not None and version > SCHEMA_VERSION:
            raise UserError(
                f"store schema version {version} is newer than this moeplan ({SCHEMA_VERSION}); upgrade moeplan"
            )
        return version

    def _missing_tables(self) -> list[str]:
        with self.engine.connect() as connection:
            present = set(inspect(connection).get_table_names())
        return [name for name in metadata.tables if name not in present]

    def _stored_version(self) -> int | None:
        """The schema version the store records, or None for a store with no tables yet."""
        with self.engine.connect() as connection:
            if not inspect(connection).has_table("meta"):
                return None
            stored = connection.execute(VERSION_QUERY).scalar()
        return None if stored is None else int(stored)

    # --- writes ------------------------------------------------------------------------------
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

        return self._insert_once(register)

    def _insert_once(self, write: Callable[[Any], int | None]) -> Any:
        """Run ``write`` (which checks for rows, then inserts the missing ones) in a transaction.

        Two processes doing this at once may both find a row missing; the second insert then
        fails on the key once the first commits. Running ``write`` again sees the committed row.
        """
        for attempt in range(3):
            try:
                with self.engine.begin() as connection:
                    return write(connection)
            except IntegrityError:
                if attempt == 2:  # a third loss is not a race: let it raise
                    raise

    def claim(self, run_id: str, owner: str, retry_failed: bool = False) -> bool:
        """Atomically take a run: pending, failed (with ``retry_failed``) or abandoned running."""
        now = time.time()
        with self.engine.begin() as connection:
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
        with self.engine.begin() as connection:
            for table in (metrics_table, routing_table):
                connection.execute(table.delete().where(table.c.run_id == run_id, table.c.step >= point["step"]))
            _insert_point(connection, run_id, point)
            connection.execute(update(runs_table).where(runs_table.c.id == run_id).values(heartbeat=time.time()))

    def replace_history(self, run_id: str, points: list[dict[str, Any]]) -> None:
        """Make the stored curve exactly ``points`` (a resumed checkpoint's history), in one transaction."""
        with self.engine.begin() as connection:
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
        with self.engine.begin() as connection:
            _put_measurements(connection, run_id, measurements or {})
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

    def record_quantization(self, run_id: str, result: dict[str, Any]) -> None:
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

        self._insert_once(write)

    def quantizations(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Stored quantisations (``scheme_spec`` and ``part_bytes`` decoded), by run, scheme, method."""
        query = select(quantization_table).order_by(
            quantization_table.c.run_id, quantization_table.c.scheme, quantization_table.c.method
        )
        if run_id is not None:
            query = query.where(quantization_table.c.run_id == run_id)
        with self.engine.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        for row in rows:
            row["scheme_spec"] = json.loads(row["scheme_spec"] or "{}")
            row["part_bytes"] = json.loads(row["part_bytes"] or "{}")
            row["symmetric"] = None if row["symmetric"] is None else bool(row["symmetric"])
        return rows

    def quantization_keys(self) -> set[tuple[str, str, str]]:
        """``(run_id, scheme_key, method)`` of every stored quantisation."""
        columns = (quantization_table.c.run_id, quantization_table.c.scheme_key, quantization_table.c.method)
        with self.engine.connect() as connection:
            return {tuple(row) for row in connection.execute(select(*columns))}

    def artifact(self, run_id: str, kind: str = "checkpoint") -> str | None:
        """The path recorded for a run's artifact (its final checkpoint), or None."""
        query = select(artifacts_table.c.path).where(artifacts_table.c.run_id == run_id, artifacts_table.c.kind == kind)
        with self.engine.connect() as connection:
            return connection.execute(query).scalar()

    def delete_runs(self, run_ids: list[str]) -> int:
        """Delete runs with their metrics, measurements, quantisations and artifact records, in one transaction."""
        with self.engine.begin() as connection:
            for table in (metrics_table, routing_table, measurements_table, quantization_table, artifacts_table):
                connection.execute(table.delete().where(table.c.run_id.in_(run_ids)))
            return connection.execute(runs_table.delete().where(runs_table.c.id.in_(run_ids))).rowcount

    def record_measurements(self, key: str, values: dict[str, float]) -> None:
        """Measurements not tied to a training run (e.g. a shape benchmarked by the search)."""
        self._insert_once(lambda connection: _put_measurements(connection, key, values))

    def fail(self, run_id: str, owner: str, error: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(runs_table)
                .where(runs_table.c.id == run_id, runs_table.c.owner == owner)
                .values(status="failed", error=error[:2000], finished_at=time.time())
            )

    # --- the service's background jobs ---------------------------------------------------------
    def submit_job(self, job_id: str, kind: str, request: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(jobs_table).values(
                    id=job_id, kind=kind, status="pending", request=json.dumps(request), created_at=time.time()
                )
            )

    def job(self, job_id: str) -> dict[str, Any] | None:
        """A job's id, kind, status, result (decoded) and error, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(select(jobs_table).where(jobs_table.c.id == job_id)).mappings().first()
        return None if row is None else _job_view(row)

    def jobs(self, statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Jobs (oldest first), without their results; only those in ``statuses`` when given."""
        query = select(jobs_table).order_by(jobs_table.c.created_at)
        if statuses is not None:
            query = query.where(jobs_table.c.status.in_(statuses))
        with self.engine.connect() as connection:
            return [_job_view(row, with_result=False) for row in connection.execute(query).mappings()]

    def take_next_job(self) -> dict[str, Any] | None:
        """Mark the oldest pending job running and return it with its request (decoded), or None."""
        with self.engine.begin() as connection:
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

    def finish_job(self, job_id: str, status: str, result: Any = None, error: str | None = None) -> None:
        """Record a job's end; a job cancelled meanwhile stays cancelled."""
        with self.engine.begin() as connection:
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

    def requeue_running_jobs(self) -> None:
        """Jobs a restart interrupted become pending again."""
        with self.engine.begin() as connection:
            connection.execute(update(jobs_table).where(jobs_table.c.status == "running").values(status="pending"))

    def cancel_job(self, job_id: str) -> bool:
        """Cancel a pending or running job; False if it does not exist or has ended."""
        with self.engine.begin() as connection:
            result = connection.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id, jobs_table.c.status.in_(("pending", "running")))
                .values(status="cancelled", finished_at=time.time())
            )
        return result.rowcount == 1

    # --- reads -------------------------------------------------------------------------------
    def runs(self, sweep: str | None = None) -> list[dict[str, Any]]:
        query = select(runs_table).order_by(runs_table.c.created_at, runs_table.c.id)
        if sweep is not None:
            query = query.where(runs_table.c.sweep == sweep)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def run(self, run_id: str) -> dict[str, Any]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(runs_table).where(runs_table.c.id.startswith(run_id))).mappings().all()
        if not rows:
            raise UserError(f"no run with id {run_id!r}; see 'moeplan runs list'")
        if len(rows) > 1:
            raise UserError(f"run id prefix {run_id!r} is ambiguous ({len(rows)} runs); give more characters")
        return dict(rows[0])

    def metrics(self, run_id: str | None = None) -> list[dict[str, Any]]:
        query = select(metrics_table).order_by(metrics_table.c.run_id, metrics_table.c.step)
        if run_id is not None:
            query = query.where(metrics_table.c.run_id == run_id)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def routing(self, run_id: str) -> list[dict[str, Any]]:
        """Expert utilisation per evaluation and MoE layer (``shares`` decoded), by step then layer."""
        query = (
            select(routing_table)
            .where(routing_table.c.run_id == run_id)
            .order_by(routing_table.c.step, routing_table.c.layer)
        )
        with self.engine.connect() as connection:
            rows = [dict(row) for row in connection.execute(query).mappings()]
        for row in rows:
            row["shares"] = json.loads(row["shares"])
        return rows

    def measurements(self, run_id: str) -> dict[str, float]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(measurements_table).where(measurements_table.c.run_id == run_id))
            return {row.key: row.value for row in rows}

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


def _put_measurements(connection, key: str, values: dict[str, float]) -> None:
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


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def abandoned(owner: str | None, heartbeat: float | None, now: float) -> bool:
    """A running claim whose process is gone (same host) or silent past the lease."""
    if owner is None:
        return True
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return heartbeat is None or now - heartbeat > LEASE_S
