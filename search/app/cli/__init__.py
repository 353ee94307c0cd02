"""The ``moeplan`` command line: one module per command group, assembled here."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from scaling.errors import UserError
from search.app.cli import arch, devices, export, fit, laws, plan, quantize, runs, serve, train
from search.app.cli.common import EXIT_RUNTIME_ERROR, EXIT_USER_ERROR, Parser, one_line

COMMAND_GROUPS = (arch, train, fit, laws, devices, runs, quantize, plan, serve, export)


def build_parser() -> Parser:
    parser = Parser(
        prog="moeplan",
        description="Scaling laws and architecture search for on-device MoE language models.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moeplan`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        sys.stderr.write(f"error: {one_line(error)}\n")
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
        sys.stderr.write(f"error: {name}: {one_line(error)} ({hint})\n")
        return EXIT_RUNTIME_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
