"""Training on the real corpus: learning, exact resume after SIGKILL, and bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from scaling.errors import UserError
from scaling.shape.arch import ArchSpec
from scaling.train.corpus import deduplicate, prepare_corpus
from scaling.train.trainer import TrainConfig, learning_rate, train
from tests.conftest import MOEPLAN, assert_user_error, run_cli

pytestmark = pytest.mark.slow  # trains proxies on real text

TINY_BASE = "vocab_size = 256\nd_model = 64\nn_layers = 2\nn_heads = 4\n"
TINY = TINY_BASE + "d_ff = 128\n"
TINY_MOE = TINY_BASE + "d_ff = 64\nn_experts = 4\ntop_k = 1\ngranularity = 2\nn_shared_experts = 1\n"


@pytest.fixture(scope="session")
def corpus():
    return prepare_corpus()


def test_corpus_is_real_deduplicated_and_split_by_document(corpus):
    assert corpus.n_documents >= 40 and 0 < corpus.n_train_documents < corpus.n_documents
    assert len(corpus.train) > 5_000_000 and len(corpus.val) > 300_000
    text = bytes(corpus.train[:20000]).decode("utf-8", errors="replace")
    assert "the" in text.lower()
    # The same corpus rebuilt gives the same split (deterministic, cached).
    assert prepare_corpus().fingerprint == corpus.fingerprint


def test_deduplicate_drops_exact_and_near_copies():
    a = " ".join(f"word{i} of the first play" for i in range(300))
    b = a.replace("word7 ", "wurd7 ")  # another edition: one word differs
    c = " ".join(f"line{i} from another text" for i in range(300))
    assert deduplicate([a, a + "  ", b, c]) == [a, c]


def test_user_corpus_formats(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("hello world " * 200)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "jsonl line text " * 150}) + "\n")
    pq.write_table(pa.table({"text": ["parquet document " * 120]}), tmp_path / "c.parquet")
    user = prepare_corpus(tmp_path)
    assert user.n_documents == 3
    assert len(user.train) + len(user.val) == 2400 + 2400 + 2040 + 1  # + one separator


def test_schedules():
    cosine = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(cosine, 0) == pytest.approx(0.1)
    assert learning_rate(cosine, 9) == pytest.approx(1.0)
    assert learning_rate(cosine, 99) == pytest.approx(0.1, abs=1e-3)
    wsd = TrainConfig(steps=100, warmup_steps=10, lr=1.0, schedule="wsd", decay_fraction=0.2)
    assert learning_rate(wsd, 50) == 1.0 and learning_rate(wsd, 79) == 1.0
    assert learning_rate(wsd, 99) == pytest.approx(0.1)


def test_loss_falls_and_bigger_is_better(corpus):
    config = TrainConfig(
        steps=120, batch_size=8, seq_len=128, lr=3e-3, warmup_steps=10, eval_interval=40, log_interval=20
    )
    small = ArchSpec(vocab_size=256, d_model=32, n_layers=1, n_heads=2, d_ff=64)
    large = ArchSpec(vocab_size=256, d_model=96, n_layers=3, n_heads=4, d_ff=256)
    small_run = train(small, config, corpus)
    large_run = train(large, config, corpus)
    val = [p["val_loss"] for p in large_run.history if p["val_loss"] is not None]
    assert val == sorted(val, reverse=True), val  # steadily falling
    assert val[-1] < 0.6 * 5.545  # far below the uniform-byte loss ln(256)
    assert large_run.final_val_loss < small_run.final_val_loss
    assert large_run.tokens == small_run.tokens == 120 * 8 * 128


def _train_command(arch_path, checkpoint_dir, *extra):
    return [
        str(MOEPLAN),
        "train",
        "--arch",
        str(arch_path),
        "--steps",
        "60",
        "--batch-size",
        "4",
        "--seq-len",
        "64",
        "--eval-interval",
        "20",
        "--log-interval",
        "5",
        "--checkpoint-interval",
        "10",
        "--warmup-steps",
        "5",
        "--device",
        "cpu",
        "--checkpoint-dir",
        str(checkpoint_dir),
        *extra,
    ]


@pytest.mark.parametrize("shape", [TINY, TINY_MOE], ids=["dense", "moe"])
def test_sigkill_and_resume_is_exact(tmp_path, shape, corpus):
    arch = tmp_path / "arch.toml"
    arch.write_text(shape)
    reference = subprocess.run(
        _train_command(arch, tmp_path / "reference", "--json"), capture_output=True, text=True, check=True
    )
    expected = json.loads(reference.stdout)["history"]

    process = subprocess.Popen(_train_command(arch, tmp_path / "killed", "--jsonl"), stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if json.loads(line)["step"] >= 35:  # past the checkpoint at step 30
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL
    resumed = subprocess.run(
        _train_command(arch, tmp_path / "killed", "--json"), capture_output=True, text=True, check=True
    )
    document = json.loads(resumed.stdout)
    assert document["resumed_from_step"] in (30, 40)

    def curve(history):
        return [(p["step"], p["train_loss"], p["val_loss"], p["lr"]) for p in history]

    assert curve(document["history"]) == curve(expected)


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli("train", "--preset", "proxy-dense-d128", "--corpus", str(empty)), "no .txt")
    assert_user_error(
        run_cli("train", "--preset", "proxy-dense-d128", "--corpus", str(tmp_path / "nope")),
        "does not exist",
    )
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text("only one document")
    assert_user_error(run_cli("train", "--preset", "proxy-dense-d128", "--corpus", str(one)), "at least 2")
    short = tmp_path / "short"
    short.mkdir()
    (short / "a.txt").write_text("a short document " * 3)
    (short / "b.txt").write_text("another tiny text " * 3)
    assert_user_error(
        run_cli("train", "--preset", "proxy-dense-d128", "--corpus", str(short)),
        "seq_len=256 is longer than the documents",
    )
    assert_user_error(run_cli("train", "--preset", "proxy-dense-d128", "--lr", "0"), "--lr")
    assert_user_error(run_cli("train", "--preset", "proxy-dense-d128", "--lr", "-1e-3"), "--lr")
    with pytest.raises(UserError, match="lr must be a positive number"):
        TrainConfig(lr=0.0)
    with pytest.raises(UserError, match="schedule"):
        TrainConfig(schedule="linear")
