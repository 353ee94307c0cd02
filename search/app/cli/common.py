"""What every ``moeplan`` command shares: the parser, architecture arguments, JSON output,
file reading and writing, and argument types.

Conventions (see ``INTERFACE.md``): ``--json`` prints exactly one JSON document on stdout;
progress goes to stderr; a user error prints one ``error: ...`` line and exits 2; a run-time
failure exits 1. Heavy modules (torch, scipy, optuna) are imported inside the handlers so
that planner commands start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from scaling.checks import argument
from scaling.errors import UserError

EXIT_USER_ERROR = 2
EXIT_RUNTIME_ERROR = 1


class HelpFormatter(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless it has none (None, False) or says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage problem as one ``error: ...`` line with exit code 2, and shows
    every flag's default in ``--help``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USER_ERROR)


# --- shared argument groups -------------------------------------------------------------------
def add_arch_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--hf-config", metavar="PATH", help="a Hugging Face config.json")
    group.add_argument("--arch", metavar="PATH", help="a moeplan architecture file (TOML/JSON)")
    group.add_argument("--preset", metavar="NAME", help="a built-in shape (arch --list-presets)")


def resolve_arch(args: argparse.Namespace) -> Any:
    """The ArchSpec named by exactly one of --hf-config, --arch or --preset."""
    if args.hf_config:
        from scaling.shape.hf_config import load_hf_config

        return load_hf_config(args.hf_config)
    if args.arch:
        from scaling.shape.arch import load_arch_file

        return load_arch_file(args.arch)
    from scaling.shape.presets import get_preset

    return get_preset(args.preset)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=json_default) + "\n")


def json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def check_output_file(path: str, flag: str) -> Path:
    """Refuse, before any work, an output file that cannot be written: a folder, a missing folder
    above it, or a place this user may not write."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{flag} {path!r} is a folder; give a file path inside it")
    folder = target.resolve().parent
    if not folder.is_dir():
        raise UserError(f"cannot write {flag} {path!r}: the folder {str(folder)!r} does not exist; create it first")
    _probe(folder, flag, path)
    return target


def check_output_folder(path: str, flag: str) -> Path:
    """Make the output folder ``path`` (only its last level, as files get only their own name) and
    check it is writable, before any work. A missing parent or a file in the way is refused."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {path!r} is a file; give a folder (it is created if its parent exists)")
    parent = folder.resolve().parent
    if not folder.exists() and not parent.is_dir():
        raise UserError(f"cannot create {flag} {path!r}: the folder {str(parent)!r} does not exist; create it first")
    try:
        folder.mkdir(exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {flag} {path!r}: {error.strerror}; choose a writable folder") from None
    _probe(folder, flag, path)
    return folder


def _probe(folder: Path, flag: str, path: str) -> None:
    """Write and remove a scratch file: the only check of permission that also holds for root."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".moeplan-probe-"):
            pass
    except OSError as error:
        raise UserError(f"cannot write {flag} {path!r}: {error.strerror}; choose a writable place") from None


def write_text(path: str, text: str, flag: str = "--out") -> None:
    """Write a whole file atomically (a kill mid-write leaves the old file or none, never half of one)."""
    target = check_output_file(path, flag)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_text(text)
    os.replace(partial, target)


def read_table(path: str) -> Any:
    """A CSV or Parquet file as a DataFrame, with one-line errors."""
    import pandas as pd

    if os.path.isdir(path):
        raise UserError(f"data file {path!r} is a folder; give a .csv or .parquet file")
    if not os.path.isfile(path):
        raise UserError(f"data file {path!r} does not exist")
    try:
        if path.endswith(".parquet"):
            return pd.read_parquet(path)
        if path.endswith(".csv"):
            return pd.read_csv(path)
    except Exception as error:  # pandas raises many types for a malformed file
        raise UserError(f"cannot read {path!r}: {one_line(error)}") from None
    raise UserError(f"data file {path!r} must end in .csv or .parquet")


positive_int = argument(integer=True, minimum=1)
positive_float = argument(above=0)
non_negative_int = argument(integer=True, minimum=0)
seed_int = argument("seed", integer=True, minimum=0)


PRECISION_CHOICES = ("fp32", "bf16", "fp16", "int8", "int4")


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
