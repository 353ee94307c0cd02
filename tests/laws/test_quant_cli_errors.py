"""Bad quantisation input to ``moeplan loss``: one ``error:`` line, exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = "from search.app.cli import main; raise SystemExit(main())"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROGRAM, *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("extra", "files", "needle"),
    [
        (["--scheme", "int4-g32", "--quant-method", "awq"], {}, "--quant-method"),
        (["--scheme", "{dir}/five.toml"], {"five.toml": "[default]\nbits = 5\ngroup_size = 32\n"}, "bits"),
    ],
)
def test_bad_quantisation_input_is_one_error_line(tmp_path, extra, files, needle):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    extra = [part.replace("{dir}", str(tmp_path)) for part in extra]
    result = run("loss", "--preset", "llama-3.2-1b", "--tokens", "9e12", *extra)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
