"""Shared test helpers: the real console script, run as a user would."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from scaling.runs.store import RunStore

REPO = Path(__file__).resolve().parent.parent
HF_CONFIGS = REPO / "tests" / "shape" / "hf_configs"  # transcribed from each model's public config.json
MOEPLAN = Path(sys.executable).parent / "moeplan"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600):
    """Run ``moeplan ARGS`` in a subprocess and capture its output."""
    completed = subprocess.run(
        [str(MOEPLAN), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def assert_user_error(result: CliResult, *fragments: str) -> None:
    """Exit 2, exactly one stderr line starting with 'error: ', no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def cli():
    return run_cli


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- sweeps: a tiny spec (4 runs, seconds each) and helpers shared by the sweep tests ----------------
TINY = """
name = "tiny"
[base]
vocab_size = 256
d_model = 16
n_layers = 1
n_heads = 2
d_ff = 32
[[vary]]
list = [{n_experts = 1}, {n_experts = 4, top_k = 1, n_shared_experts = 1, d_ff = 16}]
[tokens]
absolute = [12288, 20480]
[train]
batch_size = 4
seq_len = 32
eval_interval = 40
log_interval = 10
checkpoint_interval = 20
eval_windows = 4
[run]
seeds = [0]
"""


@pytest.fixture
def tiny_spec(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def sweep(spec, store, *extra, **kwargs):
    """``moeplan sweep run`` in the spec's folder (where stores other than SQLite keep checkpoints)."""
    kwargs.setdefault("cwd", Path(spec).parent)
    return run_cli("sweep", "run", str(spec), "--store", str(store), "--quiet", *extra, **kwargs)


def curves(store_path):
    store = RunStore(str(store_path), create=False)
    return {
        r["id"]: [(m["step"], m["train_loss"], m["val_loss"]) for m in store.metrics(r["id"])] for r in store.runs()
    }


# --- a real PostgreSQL server, started by the tests wherever pg_ctl exists ----------------------------
def postgres_binaries() -> Path | None:
    """The folder holding ``pg_ctl`` and ``initdb`` (PATH first, then Debian's layout)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return candidates[-1].parent if candidates else None


class PostgresServer:
    """A throw-away cluster on 127.0.0.1 (trust auth, no fsync), run as ``postgres`` when we are root."""

    def __init__(self, binaries: Path) -> None:
        self.binaries, self.port = binaries, free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="moeplan-pg-"))
        self.data = self.folder / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *command: str) -> None:
        subprocess.run([*self.prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(str(self.binaries / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"),
                  "-w", "start")  # fmt: skip

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(self.folder, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"moeplan_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres_server():
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("no pg_ctl on this machine (.ci/run installs PostgreSQL from Debian packages)")
    server = PostgresServer(binaries)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])  # slow: starts a server
def new_store(request, tmp_path):
    """A factory of fresh, empty stores: a SQLite file, or a database on the real PostgreSQL server."""
    if request.param == "sqlite":
        return lambda name: str(tmp_path / f"{name}.sqlite")
    server = request.getfixturevalue("postgres_server")
    return lambda name: server.new_database()


@pytest.fixture
def native_switch(monkeypatch):
    """Turns the native MLP operators on or off for one test, whatever ``MOEPLAN_NATIVE_MLP`` says outside it."""
    from scaling.proxy import native_mlp  # here, so that tests without torch do not import it

    def switch(on: bool) -> None:
        if on:
            monkeypatch.delenv("MOEPLAN_NATIVE_MLP", raising=False)
        else:
            monkeypatch.setenv("MOEPLAN_NATIVE_MLP", "0")
        native_mlp.load.cache_clear()

    yield switch
    native_mlp.load.cache_clear()  # so the next test loads under its own environment


# --- a law card with a quantisation penalty, fitted on synthetic measurements ----------------------------
def card_with_penalty(unit: dict | None = None, bootstrap: int = 20):
    """The default card plus a penalty term fitted (by the real code) on the synthetic measurements of
    tests/laws/test_quant_penalty.py; ``unit`` replaces the card's loss unit."""
    from scaling.laws.build_card import fit_quant_term
    from scaling.laws.card import QUANT_TERM, LawCard, load_card
    from tests.laws.test_quant_penalty import synthetic_frame

    document = load_card().to_dict()
    if unit is not None:
        document["loss_unit"] = unit
    card = LawCard.from_dict(document)
    frame = synthetic_frame(noise=0.03, budgets=(50, 200)).assign(loss_unit="nats/byte")  # over-trained
    card.terms[QUANT_TERM] = fit_quant_term(frame, "synthetic measurements", card.unit, bootstrap=bootstrap)
    card.name = "with-penalty"
    return card


@pytest.fixture(scope="session")
def penalty_card_path(tmp_path_factory) -> Path:
    """A card file with a quantisation penalty (see :func:`card_with_penalty`)."""
    path = tmp_path_factory.mktemp("cards") / "with-penalty.json"
    path.write_text(card_with_penalty().to_json())
    return path


def card_without_penalty():
    """The default card without its quantisation penalty term (as a card written before the term existed)."""
    from scaling.laws.card import QUANT_TERM, LawCard, load_card

    document = load_card().to_dict()
    document["terms"].pop(QUANT_TERM, None)
    card = LawCard.from_dict(document)
    card.name = "without-penalty"
    return card


@pytest.fixture(scope="session")
def penalty_free_card_path(tmp_path_factory) -> Path:
    """A card file with no quantisation penalty (see :func:`card_without_penalty`)."""
    path = tmp_path_factory.mktemp("cards") / "without-penalty.json"
    path.write_text(card_without_penalty().to_json())
    return path


def requires_dataset(*names: str):
    """Skip a test whose published dataset is not here (the files whose licence forbids shipping them).

    CI points ``MOEPLAN_DATA`` at them; a clone with nothing beside it skips, naming the file.
    """
    from scaling.laws.datasets import available, get_dataset

    missing = [get_dataset(name).filename for name in names if not available(name)]
    return pytest.mark.skipif(
        bool(missing),
        reason=f"published dataset {', '.join(missing)} is not shipped (no licence to redistribute it); "
        "set MOEPLAN_DATA to a folder that holds it",
    )
