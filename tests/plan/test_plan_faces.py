"""Every PlanRequest field reaches both faces, the CLI flags and the HTTP body (issue 33)."""

from __future__ import annotations

import argparse
import dataclasses

from search.app.bodies import PlanBody
from search.app.cli import plan as plan_cli
from search.app.plan_faces import FACES, NOT_OFFERED
from search.plan.request import PlanRequest


def _cli_flags() -> set[str]:
    parser = argparse.ArgumentParser()
    plan_cli.register(parser.add_subparsers())
    planner = parser._subparsers._group_actions[0].choices["plan"]
    return {flag for action in planner._actions for flag in action.option_strings}


def test_every_plan_request_field_is_on_the_cli_and_the_http_body():
    fields = [field.name for field in dataclasses.fields(PlanRequest)]
    assert set(fields) - set(FACES) == set(), "PlanRequest fields missing from search/app/plan_faces.FACES"
    assert set(FACES) - set(fields) == set(), "FACES lists fields PlanRequest no longer has"
    flags, body = _cli_flags(), set(PlanBody.model_fields)
    for field in fields:
        flag, key = FACES[field]
        for face, name, offered in (("cli", flag, flags), ("http", key, body)):
            if name is None:
                assert (field, face) in NOT_OFFERED, f"{field} is not on the {face} face and NOT_OFFERED says not why"
            else:
                assert name in offered, f"{field}: {face} face lacks {name!r}"


def test_http_callers_set_the_fields_they_could_not_before():
    body = PlanBody(
        device="iphone-16-pro",
        train_tokens=2e11,
        max_decode_ms=40.0,
        max_active_params=3e8,
        max_extrapolation=10.0,
        trials=10,
        samples=10,
    )
    request = body.request()
    assert (request.train_tokens, request.max_decode_ms, request.max_active_params, request.max_extrapolation) == (
        2e11,
        40.0,
        3e8,
        10.0,
    )
