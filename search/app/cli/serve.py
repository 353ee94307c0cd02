"""``moeplan serve`` and ``moeplan demo``."""

from __future__ import annotations

import argparse
import sys

from search.app.cli.common import positive_int


# --- command: serve ------------------------------------------------------------------------------
def _command_serve(args: argparse.Namespace) -> None:
    from search.app.service import serve

    print(f"serving the moeplan API on http://{args.host}:{args.port}/v1 (schema at /openapi.json)", file=sys.stderr)
    serve(args.host, args.port, args.store)


# --- command: demo ------------------------------------------------------------------------------
def _command_demo(args: argparse.Namespace) -> None:
    from search.app.demo import run_demo

    run_demo(args)


def register(commands: argparse._SubParsersAction) -> None:
    server = commands.add_parser("serve", help="serve the JSON API")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=positive_int, default=8000)
    server.add_argument("--store", default=None, help="run store URL (jobs persist there)")
    server.set_defaults(handler=_command_serve)

    demo = commands.add_parser("demo", help="the end-to-end demo on the embedded defaults")
    demo.set_defaults(handler=_command_demo)
