"""``moeplan quantize-eval``: what a precision scheme costs a trained proxy in loss, and its bytes."""

from __future__ import annotations

import argparse

from scaling.errors import UserError
from search.app.cli.common import positive_int, print_json


def _command_quantize_eval(args: argparse.Namespace) -> None:
    from scaling.shape.scheme import BUILTIN_SCHEMES, builtin_schemes, load_scheme

    if args.list_schemes:
        listing = {name: BUILTIN_SCHEMES[name].description for name in builtin_schemes()}
        if args.json:
            print_json(listing)
        else:
            for name, description in listing.items():
                print(f"{name:28} {description}")
        return
    if (args.run_id is None) == (args.checkpoint is None):
        raise UserError("give a RUN_ID or --checkpoint PATH (one of them)")
    if args.scheme is None:
        raise UserError("--scheme NAME|FILE is required; see --list-schemes for the built-in ones")
    scheme = load_scheme(args.scheme)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.checkpoint is not None:
        from scaling.train.corpus import prepare_corpus
        from scaling.train.quant_eval import quantize_checkpoint

        result = quantize_checkpoint(args.checkpoint, scheme, args.method, prepare_corpus(args.corpus), args.device)
        document = {"run_id": None, "stored": False, **result.to_dict()}
    else:
        from scaling.runs.quantize import quantize_run
        from scaling.runs.store import RunStore
        from scaling.runs.sweep import checkpoint_of

        store = RunStore(args.store, create=False)
        run = store.run(args.run_id)  # a prefix is enough, as in 'runs show'
        checkpoint = checkpoint_of(store, run["id"], args.checkpoint_dir)
        document = {**quantize_run(store, run["id"], scheme, args.method, checkpoint, device=args.device)}
        document["stored"] = True
    if args.json:
        print_json(document)
        return
    from search.app.report import human_bytes, print_table

    delta = document["loss_after"] - document["loss_before"]
    print_table(
        f"{document['scheme']} ({document['method']}) on {document['run_id'] or args.checkpoint}",
        ["loss before", "loss after", "penalty", "packed weights", "accounting"],
        [
            [
                f"{document['loss_before']:.5f}",
                f"{document['loss_after']:.5f}",
                f"{delta:+.5f} ({delta / document['loss_before']:+.2%})",
                human_bytes(document["packed_weight_bytes"]),
                f"{document['accounting_weight_bytes']:.0f} B",
            ]
        ],
    )
    print(f"losses in {document['loss_unit']}" + ("; stored in the run store" if document["stored"] else ""))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "quantize-eval",
        help="quantise a finished run (or a checkpoint) with a precision scheme; loss before and after, packed bytes",
        description=(
            "Quantise a trained proxy post-training with a precision scheme (bits and group size per part) "
            "and report its validation loss before and after (nats/byte) and its packed weight bytes. "
            "With RUN_ID the result is stored in the run store (quantization table); the run's own results "
            "are only read."
        ),
    )
    parser.add_argument("run_id", nargs="?", metavar="RUN_ID", help="a finished run (an id prefix is enough)")
    parser.add_argument("--checkpoint", metavar="PATH", help="a checkpoint.pt instead of a run (nothing is stored)")
    parser.add_argument("--scheme", metavar="NAME|FILE", help="a built-in scheme or a scheme TOML file")
    parser.add_argument("--method", choices=("rtn", "gptq"), default="rtn", help="round to nearest, or GPTQ")
    parser.add_argument("--store", help="SQLAlchemy URL (default: runs/moeplan.sqlite or $MOEPLAN_STORE)")
    parser.add_argument("--checkpoint-dir", default=None, help="where the run's checkpoints are (default: recorded)")
    parser.add_argument("--corpus", default="shakespeare", help="with --checkpoint: the corpus it was trained on")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="where to run it")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--list-schemes", action="store_true", help="list the built-in schemes and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(handler=_command_quantize_eval)
