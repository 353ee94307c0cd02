"""``moeplan export``: a shape, a checkpoint or a finished run as a llama.cpp GGUF file."""

from __future__ import annotations

import argparse
import sys

from scaling.errors import UserError
from search.app.cli.common import add_arch_arguments, check_output_file, print_json, resolve_arch


def _command_export(args: argparse.Namespace) -> None:
    from scaling.export.gguf_writer import check_type

    type_name = check_type(args.type)  # before any work
    sources = [bool(args.hf_config or args.arch or args.preset), bool(args.checkpoint), bool(args.run_id)]
    if sum(sources) != 1:
        raise UserError(
            "give one shape: --arch PATH, --preset NAME, --hf-config PATH, --checkpoint PATH or --run-id ID"
        )
    if not args.gguf.endswith(".gguf"):
        raise UserError(f"--gguf {args.gguf!r} must end in .gguf (the manifest is written beside it as .gguf.json)")
    check_output_file(args.gguf, "--gguf")
    from search.app import gguf_export

    if args.checkpoint:
        result = gguf_export.export_checkpoint(args.checkpoint, args.gguf, type_name)
    elif args.run_id:
        result = gguf_export.export_run(args.store, args.run_id, args.gguf, type_name, args.checkpoint_dir)
    else:
        result = gguf_export.export_shape(resolve_arch(args), args.gguf, type_name, seed=args.seed)
    manifest = {**result.manifest, "path": str(result.path), "manifest_path": str(result.manifest_path)}
    if args.json:
        print_json(manifest)
        return
    print(
        f"wrote {result.path} ({manifest['file_bytes'] / 1e6:.1f} MB, llama.cpp arch {manifest['llama_arch']}, "
        f"{manifest['type']}, {manifest['weights']} weights, sha256 {manifest['sha256'][:12]}) "
        f"and {result.manifest_path}"
    )
    for note in manifest["notes"]:
        print(f"note: {note}", file=sys.stderr)


def register(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export",
        help="write a shape (random weights) or a trained proxy as a llama.cpp GGUF file, with a manifest",
    )
    add_arch_arguments(export, required=False)
    export.add_argument("--checkpoint", metavar="PATH", help="a trained proxy's checkpoint.pt (exact weights)")
    export.add_argument("--run-id", metavar="ID", help="a finished run of the store (its final checkpoint)")
    export.add_argument("--store", help="with --run-id: SQLAlchemy URL (default: the project store)")
    export.add_argument("--checkpoint-dir", default=None, help="with --run-id: where its checkpoints are")
    export.add_argument("--gguf", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    export.add_argument("--type", default="f32", metavar="TYPE", help="f32, f16, q8_0 or q4_0")
    export.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    export.add_argument("--json", action="store_true", help="print the manifest as one JSON document")
    export.set_defaults(handler=_command_export)
