"""``moeplan plan``: Optuna against the exact front, constraints, outputs and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scaling.errors import UserError
from scaling.shape.arch import ArchSpec
from search.device.cost import predict
from search.device.profiles import get_device
from search.plan.pareto import pareto_mask
from search.plan.planner import plan
from search.plan.request import PlanRequest
from search.plan.result import CONTRACT_ENTRY_KEYS, CONTRACT_KEYS, PlanResult
from search.plan.space import SearchSpace
from tests.conftest import REPO, assert_user_error, run_cli


def test_the_default_space_gets_the_exact_front():
    document = plan(PlanRequest(device=get_device("iphone-16-pro"), memory_budget_bytes=1.5e9, seed=0))
    assert document["engine"] == "exhaustive" and document["n_trials"] == 0
    assert document["hypervolume"] == document["exact_hypervolume"]


def test_optuna_reaches_the_exact_front_when_asked():
    request = PlanRequest(device=get_device("iphone-16-pro"), memory_budget_bytes=1.5e9, seed=0, engine="optuna")
    document = plan(request)
    assert document["n_trials"] == 500 and document["engine"] == "optuna-nsga2"
    assert document["hypervolume"] >= 0.98 * document["exact_hypervolume"]


def test_the_engine_is_chosen_from_the_request_and_the_space_size():
    from search.plan.request import ENUMERABLE_SHAPES, choose_engine

    device = get_device("iphone-16-pro")
    assert choose_engine(PlanRequest(device=device), ENUMERABLE_SHAPES) == "exhaustive"
    assert choose_engine(PlanRequest(device=device), ENUMERABLE_SHAPES + 1) == "optuna"  # too large to enumerate
    assert choose_engine(PlanRequest(device=device, latency_oracle=lambda spec: {}), 10) == "optuna"  # --measure
    assert choose_engine(PlanRequest(device=device, storage="x.log"), 10) == "optuna"  # a study to resume
    assert choose_engine(PlanRequest(device=device, engine="optuna"), 10) == "optuna"
    assert choose_engine(PlanRequest(device=device, engine="optuna", exhaustive=True), 10) == "exhaustive"
    with pytest.raises(UserError, match="exhaustive and engine optuna"):
        PlanRequest(device=device, engine="optuna", exhaustive=True).validated()


def test_front_is_feasible_and_non_dominated(tmp_path):
    result = run_cli(
        "plan",
        "--device",
        "galaxy-s25",
        "--memory-gb",
        "1.0",
        "--exhaustive",
        "--json",
        "--objectives",
        "loss,decode_ms,prefill_ms",
        "--out",
        str(tmp_path / "plan"),
    )
    assert result.returncode == 0, result.stderr
    document = result.json()
    for key in CONTRACT_KEYS:
        assert key in document, key
    device = get_device("galaxy-s25")
    values = []
    for entry in document["pareto"]:
        for key in CONTRACT_ENTRY_KEYS:
            assert key in entry, key
        spec = ArchSpec.from_dict(entry["arch"])  # an object that --arch accepts
        independent = predict(spec, device, "int4", 512, 2048)
        assert independent["peak_memory_bytes"] <= 1.0e9
        assert independent["peak_memory_bytes"] == pytest.approx(entry["peak_memory_bytes"], rel=1e-9)
        values.append([entry["predicted_loss"], entry["decode_ms"], entry["prefill_ms"]])
    assert pareto_mask(np.array(values)).all()  # nobody on the front dominates another
    first = document["pareto"][0]
    arch_file = tmp_path / "plan" / "arch" / f"{first['arch']['name']}.json"
    checked = run_cli("arch", "--arch", str(arch_file), "--json", "--precision", "int4").json()
    assert checked["total_params"] == first["total_params"] and checked["weight_bytes"] == first["weight_bytes"]
    assert (tmp_path / "plan" / "pareto.png").exists() and len(pd.read_csv(tmp_path / "plan" / "pareto.csv")) == len(
        values
    )


def test_moe_wins_at_a_phone_budget():
    document = plan(PlanRequest(device=get_device("iphone-16-pro"), memory_budget_bytes=1.5e9, exhaustive=True))
    moe = [e for e in document["pareto"] if e["n_experts"] > 1]
    assert len(moe) >= len(document["pareto"]) // 2  # most of the front is sparse


def test_study_storage_resumes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    args = [
        "plan",
        "--device",
        "pixel-9-pro",
        "--memory-gb",
        "2",
        "--trials",
        "30",
        "--storage",
        storage,
        "--study",
        "phone",
        "--json",
    ]
    assert run_cli(*args).json()["n_trials"] == 30
    assert run_cli(*args).json()["n_trials"] == 60  # the same study, resumed
    journal = str(tmp_path / "journal.log")
    assert run_cli("plan", "--device", "pixel-9-pro", "--trials", "20", "--storage", journal, "--json").returncode == 0


def test_impossible_budget_and_bad_inputs(tmp_path):
    assert_user_error(run_cli("plan", "--device", "iphone-16-pro", "--memory-gb", "0.01"), "smallest needs")
    assert_user_error(run_cli("plan", "--device", "iphone-16-pro", "--memory-gb", "-1"), "--memory-gb", "> 0")
    assert_user_error(run_cli("plan", "--device", "iphone-16-pro", "--objectives", "loss,speed"), "unknown objective")
    assert_user_error(run_cli("plan", "--device", "iphone-16-pro", "--objectives", "loss"), "2 or 3")
    assert_user_error(run_cli("plan", "--device", "nokia"), "known devices")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"law": "not-a-law", "theta": [1.0]}))
    assert_user_error(run_cli("plan", "--device", "iphone-16-pro", "--fit", str(other)), "not a moeplan fit")
    space = tmp_path / "space.toml"
    space.write_text("[space]\nd_model = [100]\n")
    assert_user_error(run_cli("plan", "--device", "iphone-16-pro", "--space", str(space)), "multiples")


def test_space_enumeration_is_valid():
    space = SearchSpace(
        n_layers=(4, 8),
        d_model=(256, 512),
        n_experts=(1, 8),
        top_k=(1, 2),
        granularity=(1, 2),
        n_shared_experts=(0, 1),
        ffn_ratio=(2.0,),
    )
    choices = space.choices()
    arrays = space.arrays(choices)
    from scaling.shape import accounting

    specs = [space.spec(c) for c in choices]
    np.testing.assert_array_equal(accounting.total_params(arrays), [accounting.total_params(s) for s in specs])
    assert sum(1 for c in choices if c["n_experts"] == 1) == 4  # dense shapes are not repeated


def test_pareto_mask_matches_brute_force():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 6, size=(300, 3)).astype(float)
    mask = pareto_mask(values)
    for index, row in enumerate(values):
        dominated = np.any(np.all(values <= row, axis=1) & np.any(values < row, axis=1))
        if dominated:
            assert not mask[index]
    kept = values[mask]
    assert len({tuple(r) for r in kept}) == len(kept)  # one of each duplicate
    assert {tuple(r) for r in kept} == {
        tuple(r)
        for r, d in zip(
            values, [np.any(np.all(values <= r, axis=1) & np.any(values < r, axis=1)) for r in values], strict=True
        )
        if not d
    }


def test_measured_mode_caches_shapes(tmp_path):
    import sqlite3

    space = tmp_path / "space.toml"
    space.write_text(
        "[space]\nvocab_size = 256\nn_layers = [2, 4]\nd_model = [64, 128]\nn_experts = [1, 4]\n"
        "top_k = [1, 2]\ngranularity = [1]\nn_shared_experts = [0, 1]\nffn_ratio = [2.0]\n"
    )
    store = tmp_path / "measure.sqlite"
    args = [
        "plan",
        "--device",
        "iphone-16-pro",
        "--space",
        str(space),
        "--measure",
        "--trials",
        "6",
        "--store",
        str(store),
        "--objectives",
        "active_flops,decode_ms",
        "--json",
    ]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.json()["pareto"] and all(e["decode_ms"] > 0 for e in first.json()["pareto"])
    with sqlite3.connect(store) as connection:
        measured = connection.execute("SELECT run_id, key, value FROM measurements ORDER BY run_id, key").fetchall()
    assert measured and all(row[0].startswith("shape:") for row in measured)
    assert run_cli(*args).returncode == 0
    with sqlite3.connect(store) as connection:  # the same shapes again: nothing measured twice
        assert (
            connection.execute("SELECT run_id, key, value FROM measurements ORDER BY run_id, key").fetchall()
            == measured
        )
    assert_user_error(run_cli("plan", "--device", "iphone-16-pro", "--measure", "--exhaustive"), "do not combine")


def test_plan_output_fed_back_through_arch_gives_the_same_numbers(tmp_path):
    """One meaning per name: n_experts, top_k, granularity (and their physical counts) agree."""
    space = tmp_path / "space.toml"
    space.write_text(
        "[space]\nn_layers = [8]\nd_model = [512, 768]\nn_experts = [1, 8]\ntop_k = [1, 2]\n"
        "granularity = [1, 4]\nn_shared_experts = [0, 1]\nffn_ratio = [2.0]\n"
    )
    document = run_cli(
        "plan", "--device", "iphone-16-pro", "--memory-gb", "4", "--space", str(space), "--exhaustive", "--json"
    ).json()
    moe = [entry for entry in document["pareto"] if entry["n_experts"] > 1]
    assert moe, "the front holds no MoE shape to check"
    for entry in document["pareto"]:
        arch_file = tmp_path / "shape.json"
        arch_file.write_text(json.dumps(entry["arch"]))
        summary = run_cli("arch", "--arch", str(arch_file), "--precision", "int4", "--json").json()
        for key in (
            "n_experts",
            "top_k",
            "granularity",
            "n_routed_experts",
            "routed_top_k",
            "n_shared_experts",
            "total_params",
            "active_params",
            "weight_bytes",
        ):
            assert summary[key] == entry[key], (key, summary[key], entry[key])
        assert summary["n_experts"] == entry["arch"]["n_experts"] and summary["top_k"] == entry["arch"]["top_k"]
        assert summary["n_routed_experts"] == max(1, entry["n_experts"] * entry["granularity"])


def test_front_carries_unit_interval_and_p_front_and_min_p_front_keeps_robust_shapes():
    request = dict(device=get_device("iphone-16-pro"), memory_budget_bytes=1.5e9, exhaustive=True, samples=100)
    document = plan(PlanRequest(**request))
    assert document["loss_unit"].startswith("nats/token (") and document["loss_samples"] == 100
    assert "tokens" in document["tokens_unit"] and document["extrapolation"]["granularity"]["N"] > 1
    # the card's terms rest on data within 100x of these shapes (no warning at the default limit);
    # a tighter limit names each term that reaches past it, with its ratio
    assert not any("extrapolates" in warning for warning in document["warnings"])
    tight = plan(PlanRequest(**{**request, "samples": 20}, max_extrapolation=2))
    granularity_n = tight["extrapolation"]["granularity"]["N"]
    assert any(f"'granularity' extrapolates N {granularity_n:.3g}x" in warning for warning in tight["warnings"])
    for entry in document["pareto"]:
        low, high = entry["predicted_loss_ci90"]
        assert low <= entry["predicted_loss"] <= high and entry["loss_unit"] == document["loss_unit"]
        assert 0 < entry["p_front"] <= 1  # on the median front, so on some samples' fronts
    robust = plan(PlanRequest(**request, min_p_front=0.5))
    assert robust["pareto"] and all(entry["p_front"] >= 0.5 for entry in robust["pareto"])
    assert robust["min_p_front"] == 0.5
    assert_user_error(
        run_cli("plan", "--device", "iphone-16-pro", "--min-p-front", "1.5", "--exhaustive"), "--min-p-front"
    )


def test_the_space_skips_shapes_a_scheme_cannot_store():
    space = SearchSpace(
        n_layers=(8,),
        d_model=(512, 768),
        n_experts=(1, 8),
        top_k=(1,),
        granularity=(1, 4, 8),
        ffn_ratio=(2.0, 2.75),
        schemes=("int4-g32", "int4-g64", "int4-g128"),
    ).validated()
    choices = space.choices()
    offered = {(tuple(c[k] for k in c if k != "scheme"), c["scheme"]) for c in choices}
    every = SearchSpace(**{**space.to_dict(), "schemes": ()}).choices()
    for choice in every:
        spec = space.spec(choice)
        for name, scheme in space.scheme_menu.items():
            try:
                scheme.check(spec)
                fits = True
            except UserError:
                fits = False
            key = (tuple(v for k, v in choice.items() if k != "precision"), name)
            assert (key in offered) == fits, (spec.name, name)


# --- precision schemes as a search dimension ---------------------------------------------------------------
SMALL_SPACE = (
    "[space]\nn_layers = [8, 12]\nd_model = [512, 768]\nn_experts = [1, 8]\ntop_k = [1, 2]\n"
    "granularity = [1, 4]\nn_shared_experts = [0, 1]\nffn_ratio = [2.0]\n"
)


def test_default_plan_reports_its_scheme_and_says_int4_is_lossless_without_a_penalty(tmp_path):
    from search.plan.outputs import write_outputs
    from tests.conftest import card_without_penalty

    space = tmp_path / "space.toml"
    space.write_text(SMALL_SPACE)
    document = plan(
        PlanRequest(
            device=get_device("iphone-16-pro"), memory_budget_bytes=2e9, exhaustive=True,
            space=SearchSpace.from_toml(space), loss_model=card_without_penalty(),
        )
    )  # fmt: skip
    assert document["schemes"] == ["int4-g32"] and not document["loss_includes_quantisation"]
    assert all(entry["scheme"] == "int4-g32" and entry["precision"] == "int4" for entry in document["pareto"])
    assert any("no quantisation penalty" in warning for warning in document["warnings"])
    write_outputs(PlanResult.from_dict(document), tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "pareto.csv")
    assert (table["scheme"] == "int4-g32").all() and len(table) == len(document["pareto"])


def test_schemes_are_a_search_dimension_priced_part_by_part(tmp_path, penalty_card_path):
    from scaling.laws.card import load_card
    from scaling.shape.accounting import scheme_weight_bytes
    from scaling.shape.scheme import load_scheme
    from search.plan.planner import evaluate_space

    space = tmp_path / "space.toml"
    space.write_text(SMALL_SPACE)
    menu = ("int4-g32", "int8", "int4-experts-int8-rest")
    result = run_cli(
        "plan", "--device", "iphone-16-pro", "--memory-gb", "3", "--space", str(space), "--exhaustive",
        "--schemes", ",".join(menu), "--law-card", str(penalty_card_path), "--json", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = result.json()
    assert document["schemes"] == list(menu) and document["loss_includes_quantisation"]
    assert "quantization" in document["extrapolation"]
    for entry in document["pareto"]:
        spec = ArchSpec.from_dict(entry["arch"])
        assert entry["weight_bytes"] == int(scheme_weight_bytes(spec, load_scheme(entry["scheme"])))
    table = pd.read_csv(tmp_path / "out" / "pareto.csv")
    assert list(table["scheme"]) == [entry["scheme"] for entry in document["pareto"]]

    request = PlanRequest(
        device=get_device("iphone-16-pro"), memory_budget_bytes=3e9, exhaustive=True,
        space=SearchSpace.from_toml(space), loss_model=load_card(penalty_card_path),
    )  # fmt: skip
    request.space.schemes = menu
    request.space.validated()
    evaluated = evaluate_space(request.validated())
    frame = evaluated.frame.assign(name=[evaluated.request.space.spec(c).name for c in evaluated.choices])
    by_shape = frame.pivot(index="name", columns="scheme", values="loss")
    assert by_shape.notna().all().all()  # every shape at every scheme of the menu
    moe = by_shape[by_shape.index.str.startswith("moe")]
    # the penalty: int8 costs least, experts at int4 more, everything at int4 most
    assert (moe["int8"] < moe["int4-experts-int8-rest"]).all()
    assert (moe["int4-experts-int8-rest"] < moe["int4-g32"]).all()
    memory = frame.pivot(index="name", columns="scheme", values="weight_bytes")
    memory = memory[memory.index.str.startswith("moe")]
    assert (memory["int4-g32"] < memory["int4-experts-int8-rest"]).all()
    assert (memory["int4-experts-int8-rest"] < memory["int8"]).all()


def test_the_front_can_hold_one_shape_at_two_schemes(tmp_path, penalty_card_path):
    space = tmp_path / "one.toml"
    space.write_text(
        "[space]\nn_layers = [8]\nd_model = [512]\nn_experts = [1]\ntop_k = [1]\ngranularity = [1]\n"
        'n_shared_experts = [0]\nffn_ratio = [2.0]\nschemes = ["int4-g32", "int8"]\n'
    )
    document = run_cli(
        "plan", "--device", "iphone-16-pro", "--space", str(space), "--exhaustive",
        "--law-card", str(penalty_card_path), "--json",
    ).json()  # fmt: skip
    names = {entry["arch"]["name"] for entry in document["pareto"]}
    assert len(names) == 1 and {entry["scheme"] for entry in document["pareto"]} == {"int4-g32", "int8"}
    int4, int8 = sorted(document["pareto"], key=lambda entry: entry["scheme"])
    assert int4["predicted_loss"] > int8["predicted_loss"] and int4["decode_ms"] < int8["decode_ms"]
    text = run_cli(
        "plan", "--device", "iphone-16-pro", "--space", str(space), "--exhaustive", "--law-card", str(penalty_card_path)
    )  # fmt: skip
    assert text.returncode == 0 and "scheme" in text.stdout and "int4-g32" in text.stdout and "int8" in text.stdout


def test_bad_schemes_are_refused_in_one_line(tmp_path, penalty_card_path, penalty_free_card_path):
    ask = ["plan", "--device", "iphone-16-pro", "--exhaustive"]
    old = ["--law-card", str(penalty_free_card_path)]
    assert_user_error(
        run_cli(*ask, *old, "--schemes", "int4-g32,int8"), "--schemes int4-g32,int8", "no quantisation penalty"
    )
    assert_user_error(run_cli(*ask, "--schemes", "nope"), "space.schemes[0]", "neither a built-in scheme nor a file")
    assert_user_error(run_cli(*ask, "--schemes", "int8,"), "--schemes")
    bad = tmp_path / "bad.toml"
    bad.write_text("[experts]\nbits = 4\n")
    assert_user_error(run_cli(*ask, "--schemes", str(bad)), "unknown part")
    five = tmp_path / "five.toml"
    five.write_text("[default]\nbits = 5\n")
    assert_user_error(run_cli(*ask, "--schemes", str(five)), "default.bits", "not in the menu")
    space = tmp_path / "space.toml"
    space.write_text(
        '[space]\nd_model = [576, 704]\nschemes = [{name = "wide", default = {bits = 4, group_size = 128}}]\n'
    )
    assert_user_error(
        run_cli(*ask, "--space", str(space), "--law-card", str(penalty_card_path)), "'wide'", "does not divide d_model"
    )
    fit = tmp_path / "fit.json"
    runs = REPO / "runs" / "reference" / "reference_runs.csv"
    assert run_cli("fit", str(runs), "--law", "chinchilla", "--out", str(fit)).returncode == 0
    assert_user_error(run_cli(*ask, "--schemes", "int4-g32", "--fit", str(fit)), "single fit has no quantisation")


def test_space_choices_at_the_top_level_are_applied(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text("n_layers = [8]\nd_model = [512]\nn_experts = [1, 8]\n")  # no [space] line
    result = run_cli("plan", "--device", "iphone-16-pro", "--space", str(space), "--exhaustive", "--json")
    assert result.returncode == 0, result.stderr
    document = result.json()
    assert document["pareto"] and all(e["arch"]["n_layers"] == 8 and e["arch"]["d_model"] == 512
                                      for e in document["pareto"])  # fmt: skip
    assert document["space_size"] < 100  # not the whole default space
