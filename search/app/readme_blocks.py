"""README blocks generated from the code: ``make docs`` rewrites each marked block.

A block is the text between ``<!-- moeplan:NAME -->`` and ``<!-- /moeplan:NAME -->``. Each
name in :data:`BLOCKS` has a producer that returns the block's text from the code (or from a
command's committed JSON output, for blocks too expensive to recompute in a test).
``tests/app/test_readme_blocks.py`` fails when README and the producers disagree.

Usage: ``python -m search.app.readme_blocks [--check] [PATH ...]`` (default: README.md and
docs/*.md).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from search.app import doc_blocks

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def default_paths(root: Path = ROOT) -> list[Path]:
    """The files ``make docs`` renders: README.md and every docs/*.md under ``root``."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def plan_faces() -> str:
    """The table of PlanRequest fields and their CLI flag and HTTP body field."""
    from search.app.plan_faces import FACES, NOT_OFFERED

    rows = ["| `PlanRequest` field | CLI | HTTP body |", "|---|---|---|"]
    for field, (flag, key) in FACES.items():
        cli = f"`{flag}`" if flag else f"— ({NOT_OFFERED[(field, 'cli')]})"
        http = f"`{key}`" if key else f"— ({NOT_OFFERED[(field, 'http')]})"
        rows.append(f"| `{field}` | {cli} | {http} |")
    return "\n".join(rows)


QUANT_COMMANDS = (  # the quantisation penalties README quotes (tests/laws/test_readme_quant.py reruns them)
    "loss --preset llama-3.2-1b --tokens 9e12 --scheme int4-g32 --quant-method rtn",
    "loss --preset llama-3.2-1b --tokens 9e12 --scheme int4-g32 --quant-method gptq",
    "loss --preset phone-moe-a0.3b --tokens 1e12 --scheme int4-g32 --quant-method rtn",
    "loss --preset phone-moe-a0.3b --tokens 1e12 --scheme int4-g32 --quant-method gptq",
    "loss --preset phone-moe-a0.3b --tokens 1e12 --scheme int4-experts-int8-rest --quant-method rtn",
    "loss --preset llama-3.2-1b --tokens 1e10 --scheme int4-g32 --quant-method gptq",
)


def _moeplan(command: str, environment: dict[str, str] | None = None) -> str:
    """What ``moeplan COMMAND`` prints on stdout, run by this interpreter (the source tree's code)."""
    import shlex
    import subprocess

    program = "from search.app.cli import main; raise SystemExit(main())"
    args = [sys.executable, "-c", program, *shlex.split(command)]
    return subprocess.run(args, capture_output=True, text=True, check=True, env=environment).stdout


def quant_penalties() -> str:
    """The penalty (card unit) and its share of the loss for each of :data:`QUANT_COMMANDS`."""
    import json

    rows = ["| command | penalty | of the loss |", "|---|---|---|"]
    for command in QUANT_COMMANDS:
        document = json.loads(_moeplan(f"{command} --json"))
        rows.append(f"| `moeplan {command}` | {document['penalty']:+.3g} | {document['penalty_relative']:.2%} |")
    return "\n".join(rows)


TOUR_COMMANDS = (  # README's worked example: cheap commands, torch-free, a few seconds each
    "loss --preset phone-moe-a0.3b --tokens 1e12",
    "predict --preset phone-moe-a0.3b --device iphone-16-pro --precision int4",
)


def tour() -> str:
    """What :data:`TOUR_COMMANDS` print, as a console block (tables at a fixed width of 100)."""
    import os

    environment = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
    lines = ["```console"]
    for command in TOUR_COMMANDS:
        printed = _moeplan(command, environment)
        lines += [f"$ moeplan {command}", *(line.rstrip() for line in printed.rstrip("\n").splitlines())]
    return "\n".join([*lines, "```"])


BLOCKS: dict[str, Callable[[], str]] = {
    "tour": tour,
    "law-card-parameters": doc_blocks.law_card_parameters,
    "plan-faces": plan_faces,
    "quant-penalties": quant_penalties,
    "device-loop-fits": doc_blocks.device_loop_fits,
    "device-loop-pair": doc_blocks.device_loop_pair,
    "device-loop-summary": doc_blocks.device_loop_summary,
    "published-lofo": doc_blocks.published_lofo,
    "sampler-hypervolume": doc_blocks.sampler_hypervolume,
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(^<!-- moeplan:{re.escape(name)} -->\n)(.*?)(^<!-- /moeplan:{re.escape(name)} -->$)", re.S | re.M
    )


def render(text: str, blocks: dict[str, Callable[[], str]] = BLOCKS) -> str:
    """``text`` with every marked block that has a producer rewritten from it."""
    for name, produce in blocks.items():
        pattern = _pattern(name)
        if pattern.search(text):
            body = produce().rstrip("\n") + "\n"
            text = pattern.sub(lambda match, body=body: match.group(1) + body + match.group(3), text)
    return text


def marked(text: str) -> list[str]:
    """The block names marked in ``text`` (a marker stands on its own line; one quoted in prose is no block)."""
    return re.findall(r"^<!-- moeplan:([A-Za-z0-9_-]+) -->$", text, re.M)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="files to render (default: README.md and docs/*.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a block differs, write nothing")
    args = parser.parse_args(argv)
    paths = args.paths or default_paths()
    texts = {path: path.read_text(encoding="utf-8") for path in paths}
    for path, text in texts.items():
        unknown = [name for name in marked(text) if name not in BLOCKS]
        if unknown:
            print(f"error: {path} marks blocks no producer knows: {unknown}", file=sys.stderr)
            return 2
    stale = False
    for path, text in texts.items():
        rendered = render(text)
        if rendered == text:
            continue
        stale = True
        if args.check:
            print(f"{path}: generated blocks are stale; run 'make docs'", file=sys.stderr)
        else:
            path.write_text(rendered, encoding="utf-8")
            print(f"rewrote {path}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
