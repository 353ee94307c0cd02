"""The run store: every sweep, run, logged point, measurement and artifact, in one database.

SQLAlchemy over SQLite by default (``runs/moeplan.sqlite``, WAL mode), or any SQLAlchemy URL
(PostgreSQL in particular). Each write is one transaction, so a process killed mid-write
leaves no partial row. Runs are claimed with a conditional UPDATE, so any number of sweep
processes can share one store without running anything twice.

:class:`RunStore` is a thin facade over :mod:`scaling.runs.db`: a :class:`StoreCore` (engine,
migrations) and its repositories, each also reachable by name (``store.jobs_repo`` ...).
Pandas views of a store are in :mod:`scaling.runs.frames`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scaling.runs.db.core import DEFAULT_URL, SQLITE_BUSY_TIMEOUT_S, StoreCore, lock_schema, resolve_url
from scaling.runs.db.jobs import JobRepository
from scaling.runs.db.leases import LEASE_S, abandoned, owner_id
from scaling.runs.db.measurements import LatencyCache, MeasurementRepository
from scaling.runs.db.quantizations import QuantizationRepository
from scaling.runs.db.runs import POINT_FIELDS, RUN_LIST_KEYS, STATUSES, RunRepository, run_listing, status_counts
from scaling.runs.db.schema import (
    MIGRATIONS,
    QUANTIZATION_FIELDS,
    SCHEMA_VERSION,
    V3_RUN_COLUMNS,
    artifacts_table,
    jobs_table,
    measurements_table,
    meta_table,
    metadata,
    metrics_table,
    quantization_table,
    routing_table,
    runs_table,
    sweeps_table,
)

__all__ = [
    "DEFAULT_URL",
    "LEASE_S",
    "MIGRATIONS",
    "POINT_FIELDS",
    "QUANTIZATION_FIELDS",
    "RUN_LIST_KEYS",
    "SCHEMA_VERSION",
    "SQLITE_BUSY_TIMEOUT_S",
    "STATUSES",
    "V3_RUN_COLUMNS",
    "RunStore",
    "abandoned",
    "artifacts_table",
    "jobs_table",
    "lock_schema",
    "measurements_table",
    "meta_table",
    "metadata",
    "metrics_table",
    "owner_id",
    "quantization_table",
    "resolve_url",
    "routing_table",
    "run_listing",
    "runs_table",
    "status_counts",
    "sweeps_table",
]


def _to(repository: str, name: str, owner: type) -> Callable[..., Any]:
    """A facade method that calls ``self.<repository>.<name>``, with that method's docstring."""

    def method(self: RunStore, *args: Any, **kwargs: Any) -> Any:
        return getattr(getattr(self, repository), name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(owner, name).__doc__
    return method


class RunStore:
    """A handle on one store. Create it, then call its methods; each is one transaction.

    ``read_only=True`` opens it for reading only (``runs list``, ``runs export``, ``fit --store``):
    it works on a read-only file or mount and never changes the file.
    """

    def __init__(self, url: str | None = None, create: bool = True, read_only: bool = False) -> None:
        self.core = StoreCore(url, create=create, read_only=read_only)
        self.url, self.engine = self.core.url, self.core.engine
        self.runs_repo = RunRepository(self.core)
        self.quantizations_repo = QuantizationRepository(self.core)
        self.measurements_repo = MeasurementRepository(self.core)
        self.jobs_repo = JobRepository(self.core)
        self.latency_cache = LatencyCache(self.measurements_repo)

    def schema_version(self) -> int:
        return self.core.schema_version()

    def migrate(self) -> None:
        self.core.migrate()

    # runs and their events
    register_sweep = _to("runs_repo", "register_sweep", RunRepository)
    claim = _to("runs_repo", "claim", RunRepository)
    record_point = _to("runs_repo", "record_point", RunRepository)
    replace_history = _to("runs_repo", "replace_history", RunRepository)
    finish = _to("runs_repo", "finish", RunRepository)
    fail = _to("runs_repo", "fail", RunRepository)
    artifact = _to("runs_repo", "artifact", RunRepository)
    delete_runs = _to("runs_repo", "delete_runs", RunRepository)
    runs = _to("runs_repo", "runs", RunRepository)
    run = _to("runs_repo", "run", RunRepository)
    metrics = _to("runs_repo", "metrics", RunRepository)
    routing = _to("runs_repo", "routing", RunRepository)
    counts = _to("runs_repo", "counts", RunRepository)
    # quantisations
    record_quantization = _to("quantizations_repo", "record", QuantizationRepository)
    quantizations = _to("quantizations_repo", "list", QuantizationRepository)
    quantization_keys = _to("quantizations_repo", "keys", QuantizationRepository)
    # measurements
    record_measurements = _to("measurements_repo", "record", MeasurementRepository)
    measurements = _to("measurements_repo", "get", MeasurementRepository)
    # the service's background jobs
    submit_job = _to("jobs_repo", "submit", JobRepository)
    job = _to("jobs_repo", "get", JobRepository)
    jobs = _to("jobs_repo", "list", JobRepository)
    take_next_job = _to("jobs_repo", "take_next", JobRepository)
    finish_job = _to("jobs_repo", "finish", JobRepository)
    requeue_running_jobs = _to("jobs_repo", "requeue_running", JobRepository)
    cancel_job = _to("jobs_repo", "cancel", JobRepository)
