"""Expert-utilisation logging: a run forced to collapse is flagged, a healthy one is not."""

from __future__ import annotations

import json

import pytest

from scaling.runs.store import RunStore
from scaling.shape.arch import ArchSpec
from scaling.train.corpus import prepare_corpus
from scaling.train.trainer import TrainConfig, Trainer
from scaling.train.utilisation import COLLAPSE_ENTROPY, is_collapsed, layer_summary, run_summary
from tests.conftest import run_cli

MOE = ArchSpec(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, n_experts=8, top_k=1)


def test_layer_summary_definitions():
    uniform = layer_summary(0, [10] * 8, z_loss_sum=16.0, tokens=8)
    assert uniform["entropy"] == pytest.approx(1.0) and uniform["max_over_mean"] == pytest.approx(1.0)
    assert uniform["dead_fraction"] == 0 and uniform["z_loss"] == pytest.approx(2.0)
    one = layer_summary(1, [80, 0, 0, 0, 0, 0, 0, 0], z_loss_sum=0.0, tokens=80)
    assert one["entropy"] == pytest.approx(0.0) and one["max_over_mean"] == pytest.approx(8.0)
    assert one["dead_fraction"] == pytest.approx(7 / 8)
    eight_of_64 = layer_summary(0, [1] * 8 + [0] * 56, 0.0, 8)  # the documented threshold's meaning
    assert eight_of_64["entropy"] == pytest.approx(COLLAPSE_ENTROPY)
    assert is_collapsed([one]) and not is_collapsed([uniform])
    assert run_summary([uniform, one])["expert_load_entropy"] == pytest.approx(0.5)


def _train(collapse: bool) -> Trainer:
    config = TrainConfig(steps=80, batch_size=8, seq_len=64, eval_interval=40, eval_windows=8, checkpoint_interval=0)
    trainer = Trainer(MOE, config, prepare_corpus())
    if collapse:  # a router with no signal, frozen: every tie goes to expert 0, for every token
        for block in trainer.model.blocks:
            block.mlp.router.weight.data.zero_()
            block.mlp.router.weight.requires_grad_(False)
    trainer.run()
    return trainer


@pytest.mark.slow  # trains two proxies
def test_collapse_flag_on_a_forced_collapse_and_not_on_a_healthy_run(tmp_path):
    store_url = f"sqlite:///{tmp_path / 'flags.sqlite'}"
    store = RunStore(store_url)
    rows = [
        {"id": name, "sweep": "flags", "config": json.dumps({"arch": MOE.to_dict()}), "n_experts": 8}
        for name in ("healthy", "collapsed")
    ]
    store.register_sweep("flags", "", rows)
    for name in ("healthy", "collapsed"):
        trainer = _train(collapse=name == "collapsed")
        routing = trainer.result().routing
        assert len(routing) == 2 and all(len(layer["shares"]) == 8 for layer in routing)
        assert store.claim(name, "test")
        for point in trainer.history:
            store.record_point(name, point)
        facts = {**run_summary(routing), "collapsed": int(is_collapsed(routing))}
        store.finish(name, "test", 0.0, trainer.result().final_val_loss, 1.0, facts=facts)
    collapsed = store.routing("collapsed")
    assert {row["step"] for row in collapsed} == {40, 80} and len(collapsed) == 4  # every evaluation and MoE layer
    assert all(max(row["shares"]) == 1.0 and row["dead_fraction"] == pytest.approx(7 / 8) for row in collapsed)
    healthy = [row for row in store.routing("healthy") if row["step"] == 80]  # routing spreads as it learns
    assert all(row["entropy"] > COLLAPSE_ENTROPY for row in healthy) and not is_collapsed(healthy)
    listing = {run["id"]: run for run in run_cli("runs", "list", "--store", store_url, "--json").json()}
    assert listing["collapsed"]["collapsed"] is True and listing["healthy"]["collapsed"] is False
    table = run_cli("runs", "list", "--store", store_url)
    assert "COLLAPSED" in table.stdout
    shown = run_cli("runs", "show", "collapsed", "--store", store_url)
    assert shown.returncode == 0 and "Expert utilisation at step 80" in shown.stdout and "1.000" in shown.stdout
