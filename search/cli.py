"""The ``moeplan`` command line.

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
from collections.abc import Sequence
from typing import Any, NoReturn

from scaling.errors import UserError

EXIT_USER_ERROR = 2
EXIT_RUNTIME_ERROR = 1


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage problem as one ``error: ...`` line with exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_USER_ERROR)


# --- shared argument groups -------------------------------------------------------------------
def _add_arch_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--hf-config", metavar="PATH", help="a Hugging Face config.json")
    group.add_argument("--arch", metavar="PATH", help="a moeplan architecture file (TOML/JSON)")
    group.add_argument("--preset", metavar="NAME", help="a built-in shape (arch --list-presets)")


def resolve_arch(args: argparse.Namespace) -> Any:
    """The ArchSpec named by exactly one of --hf-config, --arch or --preset."""
    if args.hf_config:
        from scaling.hf_config import load_hf_config

        return load_hf_config(args.hf_config)
    if args.arch:
        from scaling.arch import load_arch_file

        return load_arch_file(args.arch)
    from scaling.presets import get_preset

    return get_preset(args.preset)


def _print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


# --- command: arch ------------------------------------------------------------------------------
def _command_arch(args: argparse.Namespace) -> None:
    from scaling.presets import get_preset, preset_names

    if args.list_presets:
        if args.json:
            _print_json(preset_names())
            return
        from search.report import print_arch_table

        print_arch_table([get_preset(name) for name in preset_names()], args.precision)
        return
    if not (args.hf_config or args.arch or args.preset):
        raise UserError("give one of --hf-config PATH, --arch PATH or --preset NAME")
    spec = resolve_arch(args)
    if args.to_hf_config:
        from scaling.hf_config import to_hf_config

        _write_text(args.to_hf_config, json.dumps(to_hf_config(spec), indent=2) + "\n")
        print(f"wrote {args.to_hf_config}", file=sys.stderr)
        return
    from scaling.accounting import summary

    if args.json:
        _print_json(summary(spec, args.precision))
    else:
        from search.report import print_arch_table

        print_arch_table([spec], args.precision)


def _write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UserError(f"cannot write {path!r}: the folder {directory!r} does not exist")
    with open(path, "w") as handle:
        handle.write(text)


# --- command: demo ------------------------------------------------------------------------------
def _command_demo(args: argparse.Namespace) -> None:
    from search.demo import run_demo

    run_demo(args)


# --- parser -------------------------------------------------------------------------------------
PRECISION_CHOICES = ("fp32", "bf16", "fp16", "int8", "int4")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="moeplan",
        description="Scaling laws and architecture search for on-device MoE language models.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    arch = commands.add_parser("arch", help="parameters, FLOPs and bytes of a shape")
    _add_arch_arguments(arch, required=False)
    arch.add_argument("--precision", choices=PRECISION_CHOICES, default="bf16")
    arch.add_argument("--json", action="store_true", help="print one JSON document")
    arch.add_argument("--list-presets", action="store_true", help="list the built-in shapes")
    arch.add_argument("--to-hf-config", metavar="OUT.json", help="write a Hugging Face config")
    arch.set_defaults(handler=_command_arch)

    demo = commands.add_parser("demo", help="the end-to-end demo on the embedded defaults")
    demo.set_defaults(handler=_command_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moeplan`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        sys.stderr.write(f"error: {_one_line(error)}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return EXIT_RUNTIME_ERROR
    except BrokenPipeError:
        return 0
    except Exception as error:  # a run-time failure: one line, traceback only when asked
        if os.environ.get("MOEPLAN_DEBUG"):
            raise
        name = type(error).__name__
        hint = "set MOEPLAN_DEBUG=1 for a traceback"
        sys.stderr.write(f"error: {name}: {_one_line(error)} ({hint})\n")
        return EXIT_RUNTIME_ERROR
    return 0


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
