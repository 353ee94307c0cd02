"""``moeplan serve`` and ``moeplan demo``."""

from __future__ import annotations

import argparse
import sys

from scaling.checks import argument


# --- command: serve ------------------------------------------------------------------------------
def _command_serve(args: argparse.Namespace) -> None:
    from search.app.service import serve

    def announce() -> None:
        print(
            f"serving the moeplan API on http://{args.host}:{args.port}/v1 (schema at /openapi.json)", file=sys.stderr
        )

    serve(args.host, args.port, args.store, insecure=args.insecure, queue_limit=args.queue_limit, announce=announce)


# --- command: demo ------------------------------------------------------------------------------
def _command_demo(args: argparse.Namespace) -> None:
    from search.app.demo import run_demo

    run_demo(args)


def register(commands: argparse._SubParsersAction) -> None:
    server = commands.add_parser(
        "serve",
        help="serve the JSON API",
        description="Serve the JSON API under /v1. With MOEPLAN_API_TOKEN set, POST and DELETE need "
        "'Authorization: Bearer <token>'.",
    )
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond loopback needs a token)")
    server.add_argument("--port", type=argument("port", integer=True, minimum=1), default=8000, help="TCP port")
    server.add_argument("--store", default=None, help="run store URL (jobs persist there)")
    server.add_argument(
        "--queue-limit",
        type=argument(integer=True, minimum=1, maximum=10_000),
        default=32,
        help="most plan and fit jobs pending or running at once; past it a submit gets 429",
    )
    server.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without MOEPLAN_API_TOKEN")
    server.set_defaults(handler=_command_serve)

    demo = commands.add_parser("demo", help="the end-to-end demo on the embedded defaults")
    demo.set_defaults(handler=_command_demo)
