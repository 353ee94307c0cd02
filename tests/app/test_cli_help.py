"""``--help`` of every command: each flag described, with its default; and the Python API's plain types."""

from __future__ import annotations

import argparse
import json

import pandas as pd
import pytest

from search.app.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every (sub)command's parser, with its path (``("devices", "calibrate")``)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield path, parser
    for action in subparsers:
        for name, child in action.choices.items():
            yield from _commands(child, (*path, name))


def test_every_flag_has_a_description_and_shows_its_default():
    commands = dict(_commands(build_parser()))
    assert len(commands) >= 15
    for path, parser in commands.items():
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[-1]
            assert action.help, f"moeplan {' '.join(path)} {flag} has no description"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert "default" in parser._get_formatter()._get_help_string(action), (path, flag)
        assert "--help" in text, path


def test_fit_help_lists_the_laws():
    from scaling.laws.registry import LAWS

    text = dict(_commands(build_parser()))[("fit",)].format_help()
    assert all(name in " ".join(text.split()) for name in (*LAWS, "auto"))


def test_python_api_returns_plain_types():
    """Every dict the Python API returns passes ``json.dumps`` as it is (no numpy scalars, no NaN)."""
    from scaling.laws.fit import fit_law
    from scaling.shape.accounting import summary
    from scaling.shape.presets import get_preset
    from search.device.cost import predict
    from search.device.profiles import get_device, list_devices
    from search.plan.planner import plan
    from search.plan.request import PlanRequest
    from search.plan.space import SearchSpace

    shape = get_preset("phone-moe-a0.3b")
    rows = [
        {"N": n, "D": d, "loss": 1.7 + 400 / n**0.34 + 410 / d**0.28}
        for n in (1e7, 3e7, 1e8, 3e8, 1e9)
        for d in (1e9, 1e10, 1e11)
    ]
    space = SearchSpace(n_layers=(8, 12), d_model=(512, 768), n_experts=(1, 8), top_k=(1,), granularity=(1,))
    documents = {
        "summary": summary(shape, "int4"),
        "predict": predict(shape, get_device("galaxy-s25"), "int4", 512, 1024, backend="cpu"),
        "predict (uncalibrated)": predict(shape, get_device("iphone-16-pro"), "int4", 512, 1024),
        "devices": [d.summary() for d in list_devices()],
        "fit": fit_law(pd.DataFrame(rows), "chinchilla", bootstrap=3, workers=1).to_dict(),
        "plan": plan(
            PlanRequest(device=get_device("iphone-16-pro"), space=space, exhaustive=True, samples=20, trials=1)
        ),
    }
    for name, document in documents.items():
        try:
            text = json.dumps(document, allow_nan=False)  # raises on numpy types, NaN or infinity
        except (TypeError, ValueError) as error:
            pytest.fail(f"{name}: {error}")
        assert json.loads(text), name


def test_host_calibration_reports_each_round():
    from scaling.shape.arch import ArchSpec
    from search.app.cli.progress import StderrProgress
    from search.app.host import measure

    seen = []
    shape = ArchSpec(name="tiny", vocab_size=256, d_model=32, n_layers=1, n_heads=2, d_ff=64)
    _, frame = measure([shape], prompts=(8,), decode_tokens=2, repeats=2, progress=lambda *a: seen.append(a))
    assert len(frame) == 1 and seen[0] == ("measuring rounds", 0, 3) and seen[-1] == ("measuring rounds", 3, 3)

    class Lines:
        text = ""

        def write(self, part):
            self.text += part

        def flush(self):
            pass

    lines = Lines()
    progress = StderrProgress(every_s=0.0, stream=lines)
    for done in range(4):
        progress("rounds", done, 3)
    assert lines.text.splitlines()[0].startswith("rounds: 0/3 (0%)") and "ETA" in lines.text.splitlines()[1]
    StderrProgress(enabled=False, stream=lines)("rounds", 1, 3)  # --json, --quiet: nothing more
    assert len(lines.text.splitlines()) == 4
