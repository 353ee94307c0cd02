"""Every user error of issue 25, through the real console script: one ``error:`` line, exit code 2,
no traceback, checked before any work starts, and nothing stored lost, created or changed.

One table, one row per case. Each row builds its inputs in a fresh folder, runs ``moeplan``
there, checks the error line, and then checks what must not have happened (a store created, a
file changed, a folder made).
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scaling.runs.store import RunStore
from tests.conftest import HF_CONFIGS, TINY, assert_user_error, run_cli

ARCH = "vocab_size = 256\nd_model = 64\nn_layers = 2\nn_heads = 4\nd_ff = 128\n"
UNWRITABLE = "/proc/moeplan-cannot-write-here"
HF_LLAMA = (HF_CONFIGS / "llama-3.2-1b" / "config.json").read_text()  # even root cannot create files under /proc


@dataclass
class Case:
    """``args`` gets the case's folder; ``files`` are written there first; ``untouched`` lists
    paths (relative to the folder) that must not exist afterwards."""

    args: Callable[[Path], list[str]]
    fragments: tuple[str, ...]
    files: dict[str, str | bytes] = field(default_factory=dict)
    untouched: tuple[str, ...] = ()


def plan(*extra: str) -> Callable[[Path], list[str]]:
    return lambda t: ["plan", "--device", "iphone-16-pro", "--trials", "5", *extra]


def sweep_spec(**changes: str) -> str:
    text = TINY
    for old, new in changes.items():
        text = text.replace(old, new)
    return text


CASES: dict[str, Case] = {
    # exit 1 with a traceback, before
    "binary --arch file": Case(
        lambda t: ["arch", "--arch", str(t / "shape.toml")], ("not a text file",), {"shape.toml": bytes(range(256))}
    ),
    "--to-hf-config a folder": Case(
        lambda t: ["arch", "--preset", "proxy-moe-d128", "--to-hf-config", str(t / "out")],
        ("--to-hf-config", "is a folder"),
        {"out/keep": ""},
    ),
    "fit --out a folder": Case(
        lambda t: ["fit", str(t / "d.csv"), "--out", str(t / "out")],
        ("--out", "is a folder"),
        {"d.csv": "N,D,loss\n1e6,1e9,3\n", "out/keep": ""},
    ),
    "plan --memory-gb inf": Case(plan("--memory-gb", "inf"), ("--memory-gb", "finite")),
    "plan --seed -1": Case(plan("--seed", "-1"), ("--seed", ">= 0")),
    "plan --seed 2^32": Case(plan("--seed", str(2**32)), ("--seed", "4294967295")),
    "plan --out a file": Case(plan("--out", "front.csv"), ("--out", "is a file"), {"front.csv": "x"}),
    "[space] vocab_size = 'abc'": Case(
        plan("--space", "s.toml"), ("space.vocab_size", "'abc'"), {"s.toml": '[space]\nvocab_size = "abc"\n'}
    ),
    "[space] ffn_ratio = [-1]": Case(
        plan("--space", "s.toml"), ("space.ffn_ratio", "> 0"), {"s.toml": "[space]\nffn_ratio = [-1]\n"}
    ),
    "sweep tokens of 1e30": Case(
        lambda t: ["sweep", "run", "spec.toml", "--store", "s.sqlite", "--quiet"],
        ("tokens.absolute", "over the limit"),
        {"spec.toml": sweep_spec(**{"absolute = [12288, 20480]": "absolute = [1e30]"})},
        untouched=("s.sqlite", "s-checkpoints"),
    ),
    "calibrate with precision int3": Case(
        lambda t: ["devices", "calibrate", "--name", "mine", "--base", "iphone-16-pro", "--measurements", "m.csv"],
        ("row 1", "int3"),
        {
            "m.csv": "arch,precision,prompt_tokens,context_tokens,prefill_ms,decode_tokens_per_s\n"
            "phone-moe-a0.3b,int3,512,1024,400,90\nqwen3-0.6b,int4,512,1024,800,60\n"
        },
        untouched=("devices/mine.toml",),
    ),
    "serve --port 99999": Case(lambda t: ["serve", "--port", "99999"], ("--port", "65535"), untouched=("runs",)),
    "fit --plot unwritable": Case(
        lambda t: ["fit", str(t / "d.csv"), "--plot", UNWRITABLE], ("--plot", UNWRITABLE), {"d.csv": "N,D,loss\n"}
    ),
    # hangs, before
    "[space] d_model = [1e9] (a hang)": Case(
        plan("--space", "s.toml"), ("space.d_model", "65536"), {"s.toml": "[space]\nd_model = [1000000000]\n"}
    ),
    # accepted silently, before
    "norm_eps = nan": Case(
        lambda t: ["arch", "--arch", str(t / "a.toml")], ("norm_eps", "nan"), {"a.toml": ARCH + "norm_eps = nan\n"}
    ),
    "rope_theta = Infinity": Case(
        lambda t: ["arch", "--arch", str(t / "a.json")],
        ("rope_theta", "inf"),
        {
            "a.json": '{"vocab_size": 256, "d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128, '
            '"rope_theta": Infinity}'
        },
    ),
    "d_model of 1e9": Case(
        lambda t: ["arch", "--arch", str(t / "a.toml")],
        ("d_model", "65536"),
        {
            "a.toml": ARCH.replace("d_model = 64", "d_model = 1000000000").replace(
                "n_heads = 4", "n_heads = 1\nhead_dim = 64"
            )
        },
    ),
    "d_model of 1e30": Case(
        lambda t: ["arch", "--arch", str(t / "a.toml")],
        ("d_model", "1e+30"),
        {"a.toml": ARCH.replace("d_model = 64", "d_model = 1e30")},
    ),
    "predict context < prompt": Case(
        lambda t: [
            "predict",
            "--preset",
            "phone-moe-a0.3b",
            "--device",
            "iphone-16-pro",
            "--prompt-tokens",
            "512",
            "--context-tokens",
            "100",
        ],
        ("context_tokens (100)", "prompt_tokens (512)"),
    ),
    "plan context < prompt": Case(
        plan("--prompt-tokens", "512", "--context-tokens", "100"), ("context_tokens (100)", "prompt_tokens (512)")
    ),
    "top-level keys beside [space]": Case(
        plan("--space", "s.toml"),
        ("['n_layers']", "outside the [space] table"),
        {"s.toml": "n_layers = [8]\n[space]\nd_model = [512]\n"},
    ),
    "--store sqlite:/// (in memory)": Case(
        lambda t: ["sweep", "run", "spec.toml", "--store", "sqlite:///", "--quiet"],
        ("in-memory",),
        {"spec.toml": TINY},
        untouched=("-checkpoints",),
    ),
    "runs list on a file that is no store": Case(
        lambda t: ["runs", "list", "--store", str(t / "notes.db")], ("no moeplan run store",), {"notes.db": ""}
    ),
    "sweep with a bad corpus": Case(
        lambda t: ["sweep", "run", "spec.toml", "--store", "s.sqlite", "--quiet"],
        ("run.corpus", "no-such-folder"),
        {"spec.toml": sweep_spec(**{"seeds = [0]": 'seeds = [0]\ncorpus = "no-such-folder"'})},
        untouched=("s.sqlite", "s-checkpoints"),
    ),
    "train --checkpoint-dir unwritable": Case(
        lambda t: ["train", "--preset", "proxy-dense-d128", "--checkpoint-dir", UNWRITABLE],
        ("--checkpoint-dir", UNWRITABLE),
    ),
    # wrong messages, before
    "--arch a folder": Case(lambda t: ["arch", "--arch", str(t / "shapes")], ("is a folder",), {"shapes/keep": ""}),
    "plan --max-decode-ms binds": Case(plan("--max-decode-ms", "0.0001"), ("--max-decode-ms 0.0001", "fastest")),
    "plan --max-active-params binds": Case(plan("--max-active-params", "10"), ("--max-active-params 10", "smallest")),
    "plan --max-weight-gb binds": Case(plan("--max-weight-gb", "0.0001"), ("--max-weight-gb 0.0001", "lightest")),
    "plan --out in a missing folder": Case(
        plan("--out", "no/such/front"), ("--out", "does not exist"), untouched=("no",)
    ),
    "fit --out in a missing folder (the same rule)": Case(
        lambda t: ["fit", str(t / "d.csv"), "--out", "no/fit.json"],
        ("--out", "does not exist"),
        {"d.csv": "N,D,loss\n"},
        untouched=("no",),
    ),
    # devices calibrate --name
    "calibrate --name ../../x": Case(
        lambda t: ["devices", "calibrate", "--name", "../../x"], ("plain name",), untouched=("devices", "x.toml")
    ),
    "calibrate shadowing a built-in profile": Case(
        lambda t: ["devices", "calibrate", "--name", "iphone-16-pro"], ("built-in", "--replace"), untouched=("devices",)
    ),
    # issue 32
    "an HF config with 0 heads (ZeroDivisionError, before)": Case(
        lambda t: ["arch", "--hf-config", str(t / "config.json")],
        ("num_attention_heads", ">= 1"),
        {"config.json": HF_LLAMA.replace('"num_attention_heads": 32', '"num_attention_heads": 0')},
    ),
    "a 100k-character --store": Case(lambda t: ["runs", "list", "--store", "s" * 100_000], ("--store", "4096")),
    "a 100k-character --out": Case(plan("--out", "o" * 100_000), ("--out", "255 a name")),
    "bench --prompt-tokens 1e9": Case(
        lambda t: ["bench", "--mode", "infer", "--preset", "proxy-moe-d128", "--prompt-tokens", "1000000000"],
        ("--prompt-tokens 1000000000", "the limit"),
    ),
    "fit --delta 1e308": Case(
        lambda t: ["fit", str(t / "d.csv"), "--delta", "1e308"], ("--delta", "<= 10"), {"d.csv": "N,D,loss\n"}
    ),
    "calibrate that misses its own data": Case(
        lambda t: ["devices", "calibrate", "--name", "mine", "--base", "iphone-16-pro", "--measurements", "m.csv"],
        ("calibration not saved", "--max-error"),
        {
            "m.csv": "arch,precision,prompt_tokens,context_tokens,prefill_ms,decode_tokens_per_s\n"
            "phone-moe-a0.3b,int4,512,1024,4000,900\nqwen3-0.6b,int4,512,1024,80,6\n"
            "phone-moe-a0.3b,int4,256,1024,20,9\nqwen3-0.6b,int4,128,1024,9000,600\n"
        },
        untouched=("devices/mine.toml",),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_user_error(tmp_path, name):
    case = CASES[name]
    for relative, content in case.files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    env = _env(tmp_path)
    result = run_cli(*case.args(tmp_path), cwd=tmp_path, env=env, timeout=120)
    assert_user_error(result, *case.fragments)
    for relative in case.untouched:
        assert not (tmp_path / relative).exists(), relative
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing changed


def test_a_port_in_use_is_a_user_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), "--store", str(tmp_path / "s.sqlite"), cwd=tmp_path)
    assert_user_error(result, f"port {port}", "in use", "--port")
    assert not (tmp_path / "s.sqlite").exists()  # refused before the store opened


@pytest.mark.parametrize("token", [None, ""])
def test_serving_beyond_loopback_needs_a_token(tmp_path, token):
    env = _env(tmp_path)
    env.pop("MOEPLAN_API_TOKEN", None)
    if token is not None:
        env["MOEPLAN_API_TOKEN"] = token
    result = run_cli("serve", "--host", "0.0.0.0", "--store", str(tmp_path / "s.sqlite"), cwd=tmp_path, env=env)
    assert_user_error(result, "--host 0.0.0.0", "MOEPLAN_API_TOKEN", "--insecure")
    assert not (tmp_path / "s.sqlite").exists()


def test_a_damaged_store_is_named_when_it_opens(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(str(path))
    rows = [{"id": f"run{i:04d}", "sweep": "s", "config": "x" * 400} for i in range(1000)]  # no overflow pages
    store.register_sweep("s", "", rows)
    store.engine.dispose()
    with sqlite3.connect(path) as connection:  # fold the WAL in, so that the damage below is in the file
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    middle = len(data) // page // 2 * page
    data[middle : middle + page] = b"\xa5" * page  # one page in the middle of the file overwritten
    path.write_bytes(bytes(data))
    for args in (["runs", "show", "run0001"], ["runs", "list"]):
        assert_user_error(run_cli(*args, "--store", str(path), cwd=tmp_path), str(path.name), "damaged")
    assert path.read_bytes() == bytes(data)  # refused, not "repaired"


def _env(folder: Path) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "MOEPLAN_DEVICES": str(folder / "devices"),
        "MOEPLAN_STORE": str(folder / "runs" / "s.sqlite"),
    }
