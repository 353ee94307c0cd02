"""``moeplan compare A B``: two shapes' stories side by side (accounting, memory, latency, loss)."""

from __future__ import annotations

import argparse
import os

from scaling.checks import argument
from scaling.errors import UserError
from search.app.cli.common import PRECISION_CHOICES, print_json


def load_shape(reference: str):
    """A preset name, an ``--arch`` file (TOML/JSON) or a Hugging Face ``config.json``."""
    if os.path.isfile(reference):
        import json

        from scaling.shape.arch import load_arch_file
        from scaling.shape.hf_config import load_hf_config

        if reference.endswith(".json"):
            try:
                with open(reference) as handle:
                    document = json.load(handle)
            except (json.JSONDecodeError, UnicodeDecodeError):
                document = {}
            if isinstance(document, dict) and "model_type" in document:
                return load_hf_config(reference)
        return load_arch_file(reference)
    from scaling.shape.presets import get_preset, preset_names

    if reference not in preset_names():
        raise UserError(f"{reference!r} is neither a file nor a preset; give an --arch file, a config.json or one of "
                        f"{', '.join(preset_names())}")  # fmt: skip
    return get_preset(reference)


def rows(stories: list[dict]) -> list[list[str]]:
    """The comparison table: one row per fact, one column per shape."""
    from search.app.report import human_bytes, human_count

    def interval(ci, digits=3):
        return "no interval (uncalibrated prior)" if not ci else f"{ci[0]:.{digits}g}-{ci[1]:.{digits}g}"

    facts = [
        ("layers x width", lambda s: f"{s['accounting']['n_layers']} x {s['accounting']['d_model']}"),
        ("E / k / G / shared", lambda s: "/".join(str(s["accounting"][k]) for k in
                                                   ("n_experts", "top_k", "granularity", "n_shared_experts"))),
        ("routed experts (physical) / selected", lambda s: f"{s['accounting']['n_routed_experts']} / "
                                                           f"{s['accounting']['routed_top_k']}"),
        ("parameters total / active", lambda s: f"{human_count(s['accounting']['total_params'])} / "
                                                f"{human_count(s['accounting']['active_params'])}"),
        ("weights", lambda s: human_bytes(s["memory"]["weight_bytes"])),
        ("KV cache", lambda s: human_bytes(s["memory"]["kv_cache_bytes"])),
        ("activations", lambda s: human_bytes(s["memory"]["activation_bytes"])),
        ("runtime", lambda s: human_bytes(s["memory"]["runtime_bytes"])),
        ("peak memory", lambda s: human_bytes(s["memory"]["peak_memory_bytes"])),
        ("decode tokens/s (90%)", lambda s: f"{s['latency']['decode']['tokens_per_s']:.1f} "
                                            f"({interval(s['latency']['decode']['tokens_per_s_ci90'])})"),
        ("prefill ms (90%)", lambda s: f"{s['latency']['prefill']['total_ms']:.0f} "
                                       f"({interval(s['latency']['prefill']['ci90_ms'])})"),
        ("predicted loss (90%)", lambda s: f"{s['loss']['median']:.4f} ({interval(s['loss']['ci90'], 4)})"),
    ]  # fmt: skip
    table = [[label, *(fact(s) for s in stories)] for label, fact in facts]
    kinds = list(dict.fromkeys(t["term"] for s in stories for t in s["loss"]["terms"]))
    for kind in kinds:
        cells = []
        for story in stories:
            term = next((t for t in story["loss"]["terms"] if t["term"] == kind), None)
            cells.append("-" if term is None else f"{term['step']:+.4f}")
        table.append([f"loss step: {kind}", *cells])
    return table


def _command_compare(args: argparse.Namespace) -> None:
    from scaling.laws.card import load_card
    from search.app.story import Deployment, shape_story
    from search.device.profiles import get_device

    device = get_device(args.device, args.backend)
    card = load_card(args.law_card)
    deployment = Deployment(device=device, precision=args.precision, loss_model=card, train_tokens=args.train_tokens,
                            prompt_tokens=args.prompt_tokens, context_tokens=args.context_tokens)  # fmt: skip
    stories = [shape_story(load_shape(reference), deployment) for reference in (args.a, args.b)]
    if args.json:
        print_json({"device": device.name, "backend": device.backend, "shapes": stories})
        return
    from search.app.report import print_table

    unit = stories[0]["loss"]["unit"]
    title = (f"{stories[0]['name']} vs {stories[1]['name']} on {device.name} ({device.backend}), {args.precision}, "
             f"loss in {unit} at {args.train_tokens:.2g} tokens")  # fmt: skip
    print_table(title, ["", stories[0]["name"] or args.a, stories[1]["name"] or args.b], rows(stories))


def register(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare",
        help="two shapes side by side: accounting, memory, latency, loss per term",
        description="Compare two shapes (presets, --arch files or config.json files) on one device.",
    )
    compare.add_argument("a", help="a preset name, an --arch file or a Hugging Face config.json")
    compare.add_argument("b", help="the other shape")
    compare.add_argument("--device", default="iphone-16-pro", help="a device profile (default: iphone-16-pro)")
    compare.add_argument("--backend", choices=("cpu", "gpu", "npu"), default=None, help="default: recommended")
    compare.add_argument("--precision", choices=PRECISION_CHOICES, default="int4", help="weight precision")
    compare.add_argument("--law-card", metavar="CARD", default=None, help="a card file or built-in name")
    compare.add_argument("--train-tokens", type=argument("tokens", above=0), default=1e12, help="training tokens")
    tokens = argument("prompt_tokens", integer=True, minimum=1)
    compare.add_argument("--prompt-tokens", type=tokens, default=512, help="tokens prefilled in one pass")
    compare.add_argument("--context-tokens", type=tokens, default=2048, help="tokens in the KV cache at decode")
    compare.add_argument("--json", action="store_true", help="print one JSON document")
    compare.set_defaults(handler=_command_compare)
