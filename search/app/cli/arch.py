"""``moeplan arch``: parameters, FLOPs and bytes of a shape."""

from __future__ import annotations

import argparse
import json
import sys

from scaling.errors import UserError
from search.app.cli.common import (
    PRECISION_CHOICES,
    add_arch_arguments,
    check_output_file,
    print_json,
    resolve_arch,
    write_text,
)


# --- command: arch ------------------------------------------------------------------------------
def _command_arch(args: argparse.Namespace) -> None:
    from scaling.shape.presets import get_preset, preset_names

    if args.list_presets:
        if args.json:
            print_json(preset_names())
            return
        from search.app.report import print_arch_table

        print_arch_table([get_preset(name) for name in preset_names()], args.precision)
        return
    if not (args.hf_config or args.arch or args.preset):
        raise UserError("give one of --hf-config PATH, --arch PATH or --preset NAME")
    if args.to_hf_config:
        check_output_file(args.to_hf_config, "--to-hf-config")
    spec = resolve_arch(args)
    if args.to_hf_config:
        from scaling.shape.hf_config import to_hf_config

        write_text(args.to_hf_config, json.dumps(to_hf_config(spec), indent=2) + "\n", "--to-hf-config")
        print(f"wrote {args.to_hf_config}", file=sys.stderr)
        return
    from scaling.shape.accounting import summary

    if args.json:
        print_json(summary(spec, args.precision))
    else:
        from search.app.report import print_arch_table

        print_arch_table([spec], args.precision)


def register(commands: argparse._SubParsersAction) -> None:
    arch = commands.add_parser("arch", help="parameters, FLOPs and bytes of a shape")
    add_arch_arguments(arch, required=False)
    arch.add_argument("--precision", choices=PRECISION_CHOICES, default="bf16", help="weight precision for the bytes")
    arch.add_argument("--json", action="store_true", help="print one JSON document")
    arch.add_argument("--list-presets", action="store_true", help="list the built-in shapes")
    arch.add_argument("--to-hf-config", metavar="OUT.json", help="write a Hugging Face config")
    arch.set_defaults(handler=_command_arch)
