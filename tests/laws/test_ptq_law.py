"""The published PTQ rows through the loader, their conversion to penalties, and the law fitted on them."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scaling.errors import UserError
from scaling.laws import datasets
from scaling.laws.ptq_data import PENALTY_UNIT, convert_ptq, ptq_rows
from scaling.laws.ptq_law import fit_ptq_law
from scaling.laws.ptq_validate import compare_ptq_forms

HEADER = (
    "source,table,model,family,params,train_tokens,quant_method,bits,group_size,eval_set,metric,fp_value,"
    "quant_value,note"
)


def _published() -> bool:
    return datasets.available("ptq_published")


needs_rows = pytest.mark.skipif(not _published(), reason="ptq_published.csv not in MOEPLAN_DATA")


def _csv(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def test_rows_become_log_perplexity_penalties_with_their_unit(tmp_path):
    path = _csv(
        tmp_path,
        "paper,t,OPT-1.3B,OPT,1.3e9,1.8e11,RTN,4,128,wikitext2,ppl,14.62,16.00,",
        "paper,t,X-1B,X,1e9,1e12,GPTQ,4,128,c4,loss,2.5,2.6,",
        "paper,t,X-1B,X,1e9,1e12,llama.cpp q4_0,4,block,wiki,ppl_ratio,1.0,1.05,",
    )
    rows = ptq_rows(path=path)
    assert rows.loc[0, "delta_loss"] == pytest.approx(math.log(16.00 / 14.62))
    assert rows.loc[0, "relative"] == pytest.approx(math.log(16.00 / 14.62) / math.log(14.62))
    assert rows.loc[1, "delta_loss"] == pytest.approx(0.1) and rows.loc[1, "relative"] == pytest.approx(0.04)
    assert rows.loc[2, "delta_loss"] == pytest.approx(math.log(1.05)) and np.isnan(rows.loc[2, "relative"])
    assert list(rows["method"]) == ["rtn", "gptq", "rtn"] and rows.loc[2, "group"] == 32
    assert (rows["penalty_unit"] == PENALTY_UNIT).all() and PENALTY_UNIT.startswith("nats/token")


@pytest.mark.parametrize(
    ("metric", "fp", "quant", "message"),
    [("", "10", "11", "gives no unit"), ("accuracy", "10", "11", "gives no unit"), ("ppl", "0", "11", "positive")],
)
def test_a_row_without_a_usable_metric_is_a_user_error(tmp_path, metric, fp, quant, message):
    path = _csv(tmp_path, f"paper,t,X-1B,X,1e9,1e12,RTN,4,128,wiki,{metric},{fp},{quant},")
    with pytest.raises(UserError, match=message) as raised:
        ptq_rows(path=path)
    assert "row 1 (X-1B)" in str(raised.value)


def test_missing_columns_are_a_user_error():
    with pytest.raises(UserError, match="lack column"):
        convert_ptq(pd.DataFrame({"model": ["X"]}))


@needs_rows
def test_published_rows_load_by_name_with_their_digest(tmp_path):
    rows = ptq_rows()
    assert len(rows) == 346 and rows["family"].nunique() >= 8
    usable = rows["relative"].dropna()
    assert (usable > -0.05).all()  # perplexity after quantisation is never well below bf16
    # a copy with one byte changed is refused by the loader's SHA-256 pin
    source = datasets.locate("ptq_published")
    (tmp_path / source.name).write_bytes(source.read_bytes().replace(b"27.65", b"27.66", 1))
    with pytest.raises(UserError, match="SHA-256"):
        datasets.locate("ptq_published", tmp_path)


@needs_rows
def test_penalty_at_fixed_size_rises_with_training_tokens():
    rows = ptq_rows()
    fit = fit_ptq_law(rows, "kumar")
    assert fit.params["gamma_D"] > 0
    grid = pd.DataFrame(
        {
            "setting": "new",
            "bits": 4.0,
            "group": 32.0,
            "N": 1e9,
            "D": [1e11, 1e12, 9e12],
            "method": "rtn",
            "asym": 0.0,
            "schedule": "annealed",
            "moe": False,
        }
    )
    predicted = fit.log_relative(grid)
    assert np.all(np.diff(predicted) > 0)


@needs_rows
def test_the_published_token_direction_holds_within_one_model_family():
    """OLMo-2 and SmolLM3 checkpoints: same size and method, more tokens, a larger relative penalty."""
    rows = ptq_rows()
    checked = 0
    for family in ("OLMo-2", "SmolLM3"):
        same = rows[(rows["family"] == family) & np.isfinite(rows["relative"])]
        for (_, _), group in same.groupby(["N", "bits"]):
            if len(group) >= 3:
                slope = np.polyfit(np.log(group["D"]), np.log(group["relative"]), 1)[0]
                assert slope > 0, (family, group["model"].iloc[0])
                checked += 1
    assert checked >= 5


@needs_rows
@pytest.mark.skipif(os.environ.get("CI_FAST") == "1", reason="leave-one-out over every form")
def test_forms_are_compared_out_of_sample_and_a_token_form_wins():
    table = compare_ptq_forms(ptq_rows(), forms=("kumar", "ouyang", "size_only"), n_columns=("active",))
    assert set(table["form"]) == {"kumar", "ouyang", "size_only"}
    assert table.iloc[0]["form"] != "size_only"
    assert (table["lofo_rmse"] >= table["rmse"]).all()  # out of sample is never better than in sample
    assert {"OPT", "LLaMA-3", "MoE"} <= set(table.iloc[0]["lofo"])
