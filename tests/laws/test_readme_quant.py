"""README's quantisation penalties are what ``moeplan loss`` prints (the marked block)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- moeplan:quant-penalties -->(.*?)<!-- /moeplan:quant-penalties -->", re.S)
ROW = re.compile(r"^\| `moeplan (?P<args>[^`]+)` \| (?P<penalty>[+-][0-9.]+) \| (?P<share>[0-9.]+)% \|$", re.M)


def quoted_rows() -> list[tuple[str, str, str]]:
    block = BLOCK.search(README.read_text())
    assert block, "README lacks the <!-- moeplan:quant-penalties --> block"
    rows = [(m["args"], m["penalty"], m["share"]) for m in ROW.finditer(block.group(1))]
    assert rows, "the quant-penalties block quotes no command"
    return rows


@pytest.mark.parametrize(("args", "penalty", "share"), quoted_rows())
def test_readme_quotes_what_the_loss_command_prints(args, penalty, share):
    program = "from search.app.cli import main; raise SystemExit(main())"
    command = [sys.executable, "-c", program, *shlex.split(args), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=README.parent)
    document = json.loads(result.stdout)
    assert f"{document['penalty']:+.3g}" == penalty
    assert f"{document['penalty_relative']:.2%}" == f"{share}%"
    assert document["penalty_unit"] == document["loss_unit"]
