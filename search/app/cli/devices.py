"""``moeplan predict`` and ``moeplan devices``: what a shape costs on a device, and the profiles."""

from __future__ import annotations

import argparse
from typing import Any

from scaling.errors import UserError
from search.app.cli.common import (
    PRECISION_CHOICES,
    Parser,
    add_arch_arguments,
    positive_float,
    positive_int,
    print_json,
    read_table,
    resolve_arch,
)


# --- commands: predict and devices --------------------------------------------------------------
def _command_predict(args: argparse.Namespace) -> None:
    from search.device.cost import predict, to_json_ready
    from search.device.profiles import get_device

    spec = resolve_arch(args)
    device = get_device(args.device)
    prediction = to_json_ready(predict(spec, device, args.precision, args.prompt_tokens, args.context_tokens))
    if args.json:
        print_json(prediction)
        return
    from search.app.report import human_bytes, print_table

    print_table(
        f"{spec.name or 'arch'} on {device.name} ({args.precision})",
        ["prefill ms", "decode tok/s", "weights", "KV cache", "peak memory", "usable", "fits"],
        [
            [
                f"{prediction['prefill_ms']:.1f}",
                f"{prediction['decode_tokens_per_s']:.1f}",
                human_bytes(prediction["weight_bytes"]),
                human_bytes(prediction["kv_cache_bytes"]),
                human_bytes(prediction["peak_memory_bytes"]),
                human_bytes(prediction["usable_memory_bytes"]),
                "yes" if prediction["fits_in_memory"] else "NO",
            ]
        ],
    )


def _command_devices_list(args: argparse.Namespace) -> None:
    from search.device.profiles import list_devices

    devices = [d.summary() for d in list_devices()]
    if args.json:
        print_json(devices)
        return
    from search.app.report import human_bytes, print_table

    print_table(
        "Device profiles",
        ["name", "usable / DRAM", "bandwidth", "fp16 compute", "measured fields"],
        [
            [
                d["name"],
                f"{human_bytes(d['usable_bytes'])} / {human_bytes(d['dram_bytes'])}",
                f"{d['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s",
                f"{d['compute_flops_fp16'] / 1e12:.2f} TFLOP/s",
                len(d["measured"]),
            ]
            for d in devices
        ],
    )


def _command_devices_calibrate(args: argparse.Namespace) -> None:
    from search.device.profiles import save_user_profile

    if args.measurements:
        from search.device.calibrate import calibrate
        from search.device.profiles import get_device

        if not args.base:
            raise UserError("--measurements needs --base DEVICE, the profile to calibrate")
        frame = read_table(args.measurements)
        if "arch" not in frame.columns:
            raise UserError("measurements need an 'arch' column (a preset name or an --arch file path)")
        specs = [_arch_from_reference(str(reference)) for reference in frame["arch"]]
        result = calibrate(
            get_device(args.base), specs, frame, name=args.name, source=f"calibrated on {args.measurements}"
        )
    else:
        from search.app.host import calibrate_host

        result = calibrate_host(name=args.name, budget_s=args.budget_s)
    path = save_user_profile(result.profile)
    document = {**result.to_dict(), "path": str(path)}
    if args.json:
        print_json(document)
    else:
        print(
            f"saved {path}: prefill MAPE {result.prefill_mape:.1%}, decode MAPE {result.decode_mape:.1%} "
            f"over {len(result.table)} measurements"
        )


def _arch_from_reference(reference: str) -> Any:
    from scaling.shape.arch import load_arch_file
    from scaling.shape.presets import get_preset

    return load_arch_file(reference) if reference.endswith((".toml", ".json")) else get_preset(reference)


def register(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="predicted latency and memory on a device")
    add_arch_arguments(predict)
    predict.add_argument("--device", required=True, help="a device name (devices list) or profile path")
    predict.add_argument("--precision", choices=PRECISION_CHOICES, default="int4")
    predict.add_argument("--prompt-tokens", type=positive_int, default=512)
    predict.add_argument("--context-tokens", type=positive_int, default=None, help="default: the prompt")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(handler=_command_predict)

    devices = commands.add_parser("devices", help="device profiles")
    device_commands = devices.add_subparsers(dest="devices_command", metavar="COMMAND", parser_class=Parser)
    device_commands.required = True
    listing = device_commands.add_parser("list", help="list the device profiles")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_command_devices_list)
    calibrate = device_commands.add_parser("calibrate", help="measure this machine, or fit to phone measurements")
    calibrate.add_argument("--name", default="host", help="name of the saved profile")
    calibrate.add_argument("--measurements", metavar="CSV", help="measurements taken on a real device")
    calibrate.add_argument("--base", metavar="DEVICE", help="the profile the measurements calibrate")
    calibrate.add_argument("--budget-s", type=positive_float, default=55.0, help="time budget on this machine")
    calibrate.add_argument("--json", action="store_true")
    calibrate.set_defaults(handler=_command_devices_calibrate)
