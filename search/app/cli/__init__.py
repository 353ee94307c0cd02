"""The ``moeplan`` command line: one module per command group, assembled here."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence

from scaling.errors import UserError
from search.app.cli import arch, devices, fit, laws, plan, quantize, runs, serve, train
from search.app.cli.common import EXIT_RUNTIME_ERROR, EXIT_USER_ERROR, Parser, one_line

COMMAND_GROUPS = (arch, train, fit, laws, devices, runs, quantize, plan, serve)


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


PATH_MAX, NAME_MAX = 4096, 255  # Linux's limits on a path and on one name in it
PATH_ARGUMENTS = {
    "arch", "checkpoint", "checkpoint_dir", "data", "fit", "from_measurements", "hf_config", "measurements", "out",
    "plot", "predict", "quantization", "scheme", "shapes", "store", "to_hf_config", "space", "corpus", "law_card",
    "report", "storage",
}  # fmt: skip


def check_path_lengths(args) -> None:
    """Refuse a path argument this machine cannot name, before any work (the OS would fail later)."""
    for dest, value in vars(args).items():
        if not isinstance(value, str) or dest not in PATH_ARGUMENTS:
            continue
        path = value.split("://", 1)[-1]  # a store URL's path part
        longest = max((len(part.encode()) for part in path.split("/")), default=0)
        if len(path.encode()) >= PATH_MAX or longest > NAME_MAX:
            flag = "--" + dest.replace("_", "-")
            raise UserError(
                f"{flag}: a path of {len(path.encode())} bytes, with a name of {longest}: over this machine's limit "
                f"({PATH_MAX} bytes a path, {NAME_MAX} a name); give a shorter path"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moeplan`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_path_lengths(args)
        args.handler(args)
    except UserError as error:
        sys.stderr.write(f"error: {one_line(error)}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return EXIT_RUNTIME_ERROR
    except BrokenPipeError:
        return 0
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG:
            return _runtime_error(error)
        sys.stderr.write(f"error: a path is over this machine's limit ({PATH_MAX} bytes a path, {NAME_MAX} a name); "
                         "give a shorter one\n")  # fmt: skip
        return EXIT_USER_ERROR
    except Exception as error:  # a run-time failure: one line, traceback only when asked
        return _runtime_error(error)
    return 0


def _runtime_error(error: Exception) -> int:
    if os.environ.get("MOEPLAN_DEBUG"):
        raise error
    name = type(error).__name__
    hint = "set MOEPLAN_DEBUG=1 for a traceback"
    sys.stderr.write(f"error: {name}: {one_line(error)[:500]} ({hint})\n")
    return EXIT_RUNTIME_ERROR


if __name__ == "__main__":
    sys.exit(main())
