"""``moeplan predict`` and ``moeplan devices``: what a shape costs on a device, and the profiles."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scaling.errors import UserError
from search.app.cli.common import (
    PRECISION_CHOICES,
    Parser,
    add_arch_arguments,
    check_output_file,
    positive_float,
    positive_int,
    print_json,
    read_table,
    resolve_arch,
)
from search.app.cli.progress import StderrProgress

BACKEND_CHOICES = ("cpu", "gpu", "npu")


# --- commands: predict and devices --------------------------------------------------------------
def _command_predict(args: argparse.Namespace) -> None:
    from search.device.cost import predict, to_json_ready
    from search.device.profiles import get_device

    spec = resolve_arch(args)
    device = get_device(args.device, args.backend)
    prediction = to_json_ready(
        predict(spec, device, args.precision, args.prompt_tokens, args.context_tokens, imbalance=args.expert_imbalance)
    )
    if args.json:
        print_json(prediction)
        return
    from search.app.report import human_bytes, print_table

    prefill, decode = f"{prediction['prefill_ms']:.1f}", f"{prediction['decode_tokens_per_s']:.1f}"
    if "prefill_ms_ci90" in prediction:
        low, high = prediction["prefill_ms_ci90"]
        prefill += f" ({low:.1f}-{high:.1f})"
        low, high = prediction["decode_tokens_per_s_ci90"]
        decode += f" ({low:.1f}-{high:.1f})"
    print_table(
        f"{spec.name or 'arch'} on {device.name} / {device.backend} ({args.precision})"
        + ("" if prediction["calibrated"] else "; uncalibrated backend, no interval"),
        [
            "prefill ms (90%)",
            "decode tok/s (90%)",
            "weights",
            "KV cache",
            "activations",
            "runtime",
            "peak memory",
            "usable",
            "fits",
        ],
        [
            [
                prefill,
                decode,
                human_bytes(prediction["weight_bytes"]),
                human_bytes(prediction["kv_cache_bytes"]),
                human_bytes(prediction["activation_bytes"]),
                human_bytes(device["overheads.runtime_bytes"]),
                human_bytes(prediction["peak_memory_bytes"]),
                human_bytes(prediction["usable_memory_bytes"]),
                "yes" if prediction["fits_in_memory"] else "NO",
            ]
        ],
    )


def _command_devices_list(args: argparse.Namespace) -> None:
    from search.device.profiles import list_devices, user_devices_dir

    devices = [d.summary() for d in list_devices()]
    if args.json:
        print_json(devices)
        return
    from search.app.report import human_bytes, print_table

    rows = []
    for d in devices:
        for name, backend in d["backends"].items():
            rows.append(
                [
                    d["name"] + ("" if d["builtin"] else " (user)"),
                    name + (" *" if name == d["recommended_backend"] else ""),
                    f"{human_bytes(d['usable_bytes'])} / {human_bytes(d['dram_bytes'])}",
                    f"{backend['effective_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s",
                    f"{backend['compute_flops_fp16'] / 1e12:.2f} TFLOP/s",
                    f"{len(backend['measured'])} of {backend['numbers']}",
                    "yes" if backend["calibrated"] else "no",
                ]
            )
    print_table(
        "Device profiles (* = recommended backend; (user) = your own, in " + str(user_devices_dir()) + ")",
        ["name", "backend", "usable / DRAM", "eff. bandwidth", "fp16 peak", "measured", "calibrated"],
        rows,
    )


def _command_devices_calibrate(args: argparse.Namespace) -> None:
    from search.device.profiles import check_user_profile_name, save_user_profile

    if args.from_llama_bench:
        _calibrate_from_llama_bench(args)
        return
    if args.from_measurements:
        _calibrate_from_measurements(args)
        return
    if args.device or args.backend or args.soc or args.out:
        raise UserError("--device, --backend, --soc and --out go with --from-measurements FILE.csv")
    default = "host-llamacpp" if args.runtime == "llamacpp" else "host"
    name = check_user_profile_name(args.name or default, args.replace)  # before measuring for a minute
    if args.measurements:
        from search.device.calibrate import calibrate
        from search.device.profiles import get_device

        if not args.base:
            raise UserError("--measurements needs --base DEVICE, the profile to calibrate")
        frame = read_table(args.measurements)
        if "arch" not in frame.columns:
            raise UserError("measurements need an 'arch' column (a preset name or an --arch file path)")
        specs = [_arch_from_reference(str(reference)) for reference in frame["arch"]]
        result = calibrate(get_device(args.base), specs, frame, name=name, source=f"calibrated on {args.measurements}")
    elif args.runtime == "llamacpp":
        from search.app.llamacpp_host import calibrate_llamacpp_host

        result = calibrate_llamacpp_host(name=name, budget_s=args.budget_s, progress=StderrProgress(not args.json))
    else:
        from search.app.host import calibrate_host

        result = calibrate_host(name=name, budget_s=args.budget_s, progress=StderrProgress(not args.json))
    check_calibration_error(result.prefill_mape, result.decode_mape, len(result.table), args.max_error)
    path = save_user_profile(result.profile, args.replace)
    document = {**result.to_dict(), "path": str(path)}
    if args.json:
        print_json(document)
    else:
        print(
            f"saved {path}: prefill MAPE {_mape(result.prefill_mape)}, decode MAPE {_mape(result.decode_mape)} "
            f"over {len(result.table)} measurements"
        )


def _mape(value: float | None) -> str:
    """A MAPE, or why there is none (no measurement of that kind, or no more of them than terms)."""
    if value is None or value != value:
        return "none (no more measurements than fitted terms: measure more prompt sizes)"
    return f"{value:.1%}"


def check_calibration_error(prefill_mape: float, decode_mape: float, rows: int, limit: float) -> None:
    """Refuse to save a calibration that misses its own measurements by more than ``limit`` (MAPE):
    its numbers would price every plan wrong (a loaded machine measures noise, not the device)."""
    worst = max(prefill_mape, decode_mape)
    if not worst <= limit:  # NaN too
        raise UserError(
            f"calibration not saved: it misses its own {rows} measurements by {prefill_mape:.0%} (prefill) and "
            f"{decode_mape:.0%} (decode) mean absolute error, over --max-error {limit:.0%}; measure on a quiet machine "
            "(see the load average), with a longer --budget-s, or raise --max-error"
        )


def _calibrate_from_measurements(args: argparse.Namespace) -> None:
    """Fit one backend of a profile to published measurements (the published file's columns)."""
    from search.device.backend_fit import calibrate_backend
    from search.device.measurements import backend_of, load_measurements, read_measurements
    from search.device.profiles import check_user_profile_name, get_device, save_profile, save_user_profile

    if not args.device or not args.backend:
        raise UserError("--from-measurements needs --device NAME and --backend cpu|gpu|npu")
    if args.out:
        check_output_file(args.out, "--out")
    if args.measurements or args.base:
        raise UserError("--from-measurements does not combine with --measurements/--base")
    profile = get_device(args.device, args.backend)
    frame = load_measurements(args.from_measurements)
    socs = tuple(args.soc) if args.soc else profile.socs
    rows = read_measurements(frame, args.backend, socs)
    if not rows:
        on_backend = sorted(
            {str(row["soc"]) for _, row in frame.iterrows() if backend_of(str(row["runtime_backend"])) == args.backend}
        )
        raise UserError(
            f"no row of {args.from_measurements} ran on the {args.backend} of {' or '.join(socs) or 'an unnamed SoC'}; "
            f"rows on that backend come from: {', '.join(on_backend) or 'none'} (choose with --soc NAME)"
        )
    origin = Path(args.from_measurements).name
    foreign = sorted(set(socs) - set(profile.socs))
    if foreign:
        origin += f", rows measured on {', '.join(foreign)}, not on this device's {profile.soc or 'SoC'}"
    if args.name:
        check_user_profile_name(args.name, args.replace)
    result = calibrate_backend(profile, rows, name=args.name or profile.name, origin=origin)  # checks each row
    if not args.out:  # the default name is the profile's own: a built-in one is shadowed only on purpose
        check_user_profile_name(result.profile.name, args.replace)
    path = save_profile(result.profile, Path(args.out)) if args.out else save_user_profile(result.profile, args.replace)
    if args.json:
        print_json({**result.to_dict(), "path": str(path)})
    else:
        print(result.summary())
        print(f"saved {path}")


def _calibrate_from_llama_bench(args: argparse.Namespace) -> None:
    """Fit one backend of a profile to llama-bench output matched to exported shapes."""
    from search.device.backend_fit import calibrate_backend
    from search.device.llama_bench import (
        fitted_terms,
        llamacpp_priors,
        load_manifests,
        read_llama_bench,
        to_measurements,
    )
    from search.device.profiles import check_user_profile_name, get_device, save_profile, save_user_profile

    if not args.device or not args.backend:
        raise UserError("--from-llama-bench needs --device NAME (the profile to calibrate) and --backend cpu|gpu|npu")
    if args.out:
        check_output_file(args.out, "--out")
    name = args.name or f"{Path(args.device).stem}-llamacpp"
    if not args.out:
        check_user_profile_name(name, args.replace)
    profile = llamacpp_priors(get_device(args.device, args.backend))
    rows = read_llama_bench(args.from_llama_bench)
    manifests = load_manifests(args.manifest or [str(Path(args.from_llama_bench).resolve().parent)])
    origin = f"llama-bench output {Path(args.from_llama_bench).name}"
    measurements = to_measurements(rows, manifests, profile.name, args.backend, origin)
    terms = fitted_terms(measurements)
    result = calibrate_backend(profile, measurements, terms=terms, name=name, origin=origin)
    path = save_profile(result.profile, Path(args.out)) if args.out else save_user_profile(result.profile, args.replace)
    if args.json:
        print_json({**result.to_dict(), "path": str(path), "runtime": "llamacpp"})
    else:
        print(result.summary())
        print(f"saved {path}")


def _arch_from_reference(reference: str) -> Any:
    from scaling.shape.arch import load_arch_file
    from scaling.shape.presets import get_preset

    return load_arch_file(reference) if reference.endswith((".toml", ".json")) else get_preset(reference)


def register(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="predicted latency and memory on a device")
    add_arch_arguments(predict)
    predict.add_argument("--device", required=True, help="a device name (devices list) or profile path")
    predict.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="default: the recommended one")
    predict.add_argument("--precision", choices=PRECISION_CHOICES, default="int4", help="weight precision")
    predict.add_argument("--prompt-tokens", type=positive_int, default=512, help="tokens prefilled in one pass")
    predict.add_argument("--context-tokens", type=positive_int, default=None, help="default: the prompt")
    predict.add_argument(
        "--expert-imbalance", type=positive_float, default=1.0, help="busiest expert's load over the mean (>= 1)"
    )
    predict.add_argument("--json", action="store_true", help="print one JSON document")
    predict.set_defaults(handler=_command_predict)

    devices = commands.add_parser("devices", help="device profiles")
    device_commands = devices.add_subparsers(dest="devices_command", metavar="COMMAND", parser_class=Parser)
    device_commands.required = True
    listing = device_commands.add_parser("list", help="list the device profiles and their backends")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    listing.set_defaults(handler=_command_devices_list)
    calibrate = device_commands.add_parser(
        "calibrate", help="measure this machine, or fit a profile to phone measurements"
    )
    calibrate.add_argument("--name", default=None, help="plain name of the saved profile (default: host, or --device)")
    calibrate.add_argument("--replace", action="store_true", help="allow a name that shadows a built-in profile")
    calibrate.add_argument("--measurements", metavar="CSV", help="measurements taken on a real device")
    calibrate.add_argument("--base", metavar="DEVICE", help="the profile the measurements calibrate")
    calibrate.add_argument(
        "--from-measurements", metavar="FILE.csv", help="published measurements (published_measurements.csv columns)"
    )
    calibrate.add_argument(
        "--from-llama-bench", metavar="FILE", help="llama-bench output (-o json, jsonl, csv or md) of exported shapes"
    )
    calibrate.add_argument(
        "--manifest",
        action="append",
        metavar="PATH",
        help="with --from-llama-bench: export manifests (files or folders; default: the file's folder)",
    )
    calibrate.add_argument("--device", metavar="NAME", help="with --from-measurements: the profile to calibrate")
    calibrate.add_argument("--backend", choices=BACKEND_CHOICES, help="with --from-measurements: its backend")
    calibrate.add_argument(
        "--soc", action="append", metavar="SOC", help="calibrate on rows of this SoC (default: the profile's own)"
    )
    calibrate.add_argument("--out", metavar="PATH.toml", help="write the calibrated profile here")
    calibrate.add_argument("--budget-s", type=positive_float, default=55.0, help="time budget on this machine")
    calibrate.add_argument(
        "--runtime", choices=("torch", "llamacpp"), default="torch", help="on this machine: time torch or llama.cpp"
    )
    calibrate.add_argument(
        "--max-error",
        type=positive_float,
        default=0.5,
        help="refuse to save when the fit misses its own measurements by more than this MAPE (0.5: 50%%)",
    )
    calibrate.add_argument("--json", action="store_true", help="print one JSON document (no progress)")
    calibrate.set_defaults(handler=_command_devices_calibrate)
