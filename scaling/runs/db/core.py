"""The store's core: the engine (SQLite in WAL mode, or any SQLAlchemy URL), schema migrations
and one-transaction writes. Repositories (:mod:`scaling.runs.db`) hold the queries.

A store opened ``read_only`` never writes: SQLite files open with ``mode=ro`` (and, when even
the WAL index cannot be made, as immutable), no pragma changes the file, and a store whose
schema is older than this moeplan is refused rather than migrated.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, event, insert, inspect, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError

from scaling.errors import UserError
from scaling.runs.db.schema import MIGRATIONS, SCHEMA_VERSION, VERSION_QUERY, meta_table, metadata

DEFAULT_URL = "sqlite:///runs/moeplan.sqlite"
SQLITE_BUSY_TIMEOUT_S = 30.0  # how long a SQLite connection waits for another's lock
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


def resolve_url(url: str | None) -> str:
    """``--store`` or ``$MOEPLAN_STORE`` or the default SQLite file; bare paths become SQLite URLs."""
    url = url or os.environ.get("MOEPLAN_STORE") or DEFAULT_URL
    if "://" not in url:
        url = f"sqlite:///{url}"
    if url.startswith(("postgresql://", "postgres://")):  # psycopg 3 is the driver moeplan ships for
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def sqlite_path(url: str) -> Path | None:
    """The file a ``sqlite:///`` URL names (also as a ``file:`` URI), or None for other URLs."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path.removeprefix("file:"))


def _read_only_url(url: str, path: Path, immutable: bool) -> str:
    """A SQLite URL that opens ``path`` read-only (as a URI: ``mode=ro``, or ``immutable=1``)."""
    query = "immutable=1" if immutable else "mode=ro"
    return f"sqlite:///file:{quote(str(path))}?{query}&uri=true"


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


def _check_path(url: str, path: Path, create: bool) -> None:
    """Refuse, naming the file, a SQLite path that cannot be (or must not become) a store."""
    if not create and not path.exists():
        raise UserError(f"store {str(path)!r} does not exist; run a sweep first or pass --store")
    if not create and path.is_file() and not _is_sqlite_file(path):  # a read never turns a file into a store
        raise UserError(f"{str(path)!r} holds no moeplan run store (not a SQLite database); check --store")
    if path.is_dir():
        raise UserError(f"store {str(path)!r} is a folder; give a SQLite file, e.g. {str(path / 'moeplan.sqlite')!r}")
    if not path.parent.exists():
        if create and url == resolve_url(DEFAULT_URL):  # the default store makes its folder
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            raise UserError(f"cannot create store {str(path)!r}: folder {str(path.parent)!r} does not exist")


def _check_version(version: int | None) -> int | None:
    if version is not None and version > SCHEMA_VERSION:
        raise UserError(
            f"store schema version {version} is newer than this moeplan ({SCHEMA_VERSION}); upgrade moeplan"
        )
    return version


class StoreCore:
    """One store's engine: opened, checked and migrated (or, ``read_only``, only opened and checked)."""

    def __init__(self, url: str | None = None, create: bool = True, read_only: bool = False) -> None:
        self.url = resolve_url(url)
        self.read_only = read_only
        try:
            self.engine: Engine = self._connect(create and not read_only)
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
        path = sqlite_path(self.url)
        if path is not None:
            _check_path(self.url, path, create)
        if path is not None and self.read_only:
            self.engine = self._sqlite_engine(_read_only_url(self.url, path, immutable=False))
            try:
                self._quick_check()
            except OperationalError:  # a read-only folder: SQLite cannot make the WAL index beside it
                self.engine.dispose()
                self.engine = self._sqlite_engine(_read_only_url(self.url, path, immutable=True))
                self._quick_check()
        else:
            self.engine = self._sqlite_engine(self.url) if path is not None else create_engine(self.url, future=True)
            if path is not None:
                self._quick_check()
        if not create and self._stored_version() is None:  # a read must not turn any file into a store
            raise UserError(f"{self.url!r} holds no moeplan run store (no tables); check --store / MOEPLAN_STORE")
        self.migrate()
        return self.engine

    def _sqlite_engine(self, url: str) -> Engine:
        engine = create_engine(url, future=True)
        read_only = self.read_only

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record):  # WAL: readers never block the writer
            cursor = connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            if not read_only:  # both pragmas may write the file
                _set_wal_mode(cursor, SQLITE_BUSY_TIMEOUT_S)
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

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
        if _check_version(self._stored_version()) == SCHEMA_VERSION and not self._missing_tables():
            return
        if self.read_only:
            raise UserError(
                f"store {self.url!r} has an older schema (version {self._stored_version()}, this moeplan "
                f"writes {SCHEMA_VERSION}) and is opened read-only; run any writing command on it once "
                "(e.g. 'moeplan sweep') from a writable copy to migrate it"
            )
        with self.engine.begin() as connection:
            lock_schema(connection)
            metadata.create_all(connection)
            stored = connection.execute(VERSION_QUERY).scalar()
            if stored is None:
                connection.execute(insert(meta_table).values(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            version = _check_version(int(stored))
            if version == SCHEMA_VERSION:  # another process migrated it while we waited for the lock
                return
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](connection)
                version += 1
            set_version = update(meta_table).where(meta_table.c.key == "schema_version").values(value=str(version))
            connection.execute(set_version)

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

    # --- transactions ------------------------------------------------------------------------
    def insert_once(self, write: Callable[[Any], Any]) -> Any:
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
