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
from typing import Any, NoReturn

from scaling.errors import UserError

EXIT_USER_ERROR = 2
EXIT_RUNTIME_ERROR = 1


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage problem as one ``error: ...`` line with exit code 2."""

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


def write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"cannot write {path!r}: the folder {directory!r} does not exist")
    with open(path, "w") as handle:
        handle.write(text)


def read_table(path: str) -> Any:
    """A CSV or Parquet file as a DataFrame, with one-line errors."""
    import pandas as pd

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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


PRECISION_CHOICES = ("fp32", "bf16", "fp16", "int8", "int4")


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
