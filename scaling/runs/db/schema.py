"""The store's schema, owned here: its tables, its version and the migrations between versions.

Every table of the store is declared in this module and nowhere else; a change to a table is a
new :data:`SCHEMA_VERSION` with a migration from the one before (:data:`MIGRATIONS`), applied by
:meth:`scaling.runs.db.core.StoreCore.migrate`.
"""

from __future__ import annotations

import json
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
    inspect,
    select,
    text,
    update,
)

SCHEMA_VERSION = 5

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


# Migrations from version v to v+1, applied in order by :meth:`RunStore.migrate`.
MIGRATIONS: dict[int, Any] = {
    1: _add_attempts,
    2: _add_run_facts,
    3: _one_meaning_per_name,
    4: _add_quantization,
}
