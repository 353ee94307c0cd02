"""The one checker of numbers given by users: a number, finite, integral when it must be, within range.

The command line (through :func:`argument`), the HTTP service and the Python API (``ArchSpec``,
``TrainConfig``, sweep specs, the search space, plan requests, the cost model, fits) all call
:func:`check_number`, so the three faces can never disagree on what a valid value is, and an
error names the field, what it must be and the value it got.

:data:`LIMITS` gives every size an upper bound that names the limit: a shape of a billion
model dimensions is refused at once, instead of spinning the planner or printing a table of
``12000004001000001536.00T`` parameters.
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scaling.errors import UserError

# Upper bounds, generous next to every published model (d_model 18432, d_ff 73728, 256 routed
# experts, 262144 tokens of vocabulary, 126 layers) but far below what hangs or overflows.
LIMITS: dict[str, float] = {
    "vocab_size": 2**24,
    "d_model": 2**16,
    "n_layers": 1024,
    "n_heads": 1024,
    "n_kv_heads": 1024,
    "head_dim": 1024,
    "d_ff": 2**20,
    "moe_d_ff": 2**20,
    "shared_expert_d_ff": 2**20,
    "n_experts": 4096,
    "top_k": 4096,
    "granularity": 4096,
    "n_routed_experts": 2**20,
    "n_shared_experts": 256,
    "moe_layer_step": 1024,
    "first_dense_layers": 1024,
    "rope_theta": 1e12,
    "norm_eps": 1.0,
    "tokens": 1e15,  # training tokens of one run or plan (65 times Llama 3's 15T)
    "prompt_tokens": 10_000_000,
    "context_tokens": 10_000_000,
    "memory_gb": 1e5,  # 100 TB: far past any device
    "seed": 2**32 - 1,  # numpy's and Optuna's seeds
    "port": 65535,
    "steps": 10**9,
    "batch_size": 2**20,
    "seq_len": 2**20,
    "samples": 100_000,
    "trials": 10**7,
    "bootstrap": 100_000,
    "delta": 10.0,  # a Huber threshold on log residuals: past a few units it is least squares already
}


def check_number(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
    allow_none: bool = False,
) -> Any:
    """``value`` if it is a finite number (an integer when ``integer``) within the bounds, else a
    :class:`UserError` naming ``name``.

    Args:
        value: The value to check (``bool`` is never a number here).
        name: The field, flag or key the user wrote, for the message.
        integer: Require an integer (an ``int`` or numpy integer; 2.0 is not one).
        minimum: Inclusive lower bound.
        above: Exclusive lower bound (``above=0``: positive).
        maximum: Inclusive upper bound; defaults to :data:`LIMITS` for ``name``'s last part.
        below: Exclusive upper bound.
        allow_none: Accept ``None`` (an optional value left out).
    """
    if value is None and allow_none:
        return None
    if maximum is None:
        maximum = LIMITS.get(name.rsplit(".", 1)[-1].lstrip("-").replace("-", "_"))
    wanted = _Wanted(integer, minimum, above, maximum, below)  # worded only for an error: this runs per request
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{name} must be {wanted}, got {value!r}")
    if integer and not isinstance(value, numbers.Integral):
        raise UserError(f"{name} must be {wanted}, got {value!r}")
    if not integer:
        try:
            as_float = float(value)
        except OverflowError:  # an int past 1.8e308 (JSON allows 10**400)
            raise UserError(f"{name} must be {wanted}, got a number too large to represent") from None
        if not math.isfinite(as_float):
            raise UserError(f"{name} must be {wanted}, got {as_float}")
    out_of_range = (
        (minimum is not None and value < minimum)
        or (above is not None and not value > above)
        or (maximum is not None and value > maximum)
        or (below is not None and not value < below)
    )
    if out_of_range:
        limit = "" if maximum is None or value <= maximum else " (the limit)"
        raise UserError(f"{name} must be {wanted}{limit}, got {_show(value)}")
    return int(value) if integer else value


class _Wanted:
    """What a value must be, put into words when an error message formats it."""

    def __init__(self, *bounds: Any) -> None:
        self.bounds = bounds

    def __str__(self) -> str:
        return _describe(*self.bounds)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _show(value: Any) -> str:
    """A number as a user can read it: 12, 0.5, 1e+30, or the digit count of a huge integer."""
    if abs(value) < 1e16:
        return str(value)
    try:
        return f"{float(value):.3g}"
    except OverflowError:
        return f"a {len(str(abs(int(value))))}-digit number"


def _describe(integer: bool, minimum, above, maximum, below) -> str:
    kind = "an integer" if integer else "a finite number"
    low = None if minimum is None else f">= {_fmt(minimum)}"
    low = f"> {_fmt(above)}" if above is not None else low
    high = None if maximum is None else f"<= {_fmt(maximum)}"
    high = f"< {_fmt(below)}" if below is not None else high
    bounds = " and ".join(part for part in (low, high) if part)
    return f"{kind} {bounds}" if bounds else kind


def _fmt(bound: float) -> str:
    if float(bound).is_integer() and abs(bound) < 1e10:
        return str(int(bound))
    return f"{bound:g}"


def check_tokens(prompt_tokens: Any, context_tokens: Any) -> None:
    """The KV cache holds the prompt: ``context_tokens`` must be at least ``prompt_tokens``."""
    if context_tokens is not None and context_tokens < prompt_tokens:
        raise UserError(
            f"context_tokens ({context_tokens}) must be at least prompt_tokens ({prompt_tokens}): the KV cache "
            "holds the prompt; raise --context-tokens or lower --prompt-tokens"
        )


def argument(limit: str | None = None, **bounds: Any) -> Callable[[str], Any]:
    """An argparse ``type`` that parses a flag's text and applies :func:`check_number`.

    ``limit`` names the :data:`LIMITS` entry that bounds it from above (``"seed"``, ``"port"``).
    argparse then prints one ``error: argument --flag: ...`` line and exits with code 2.
    """
    integer = bool(bounds.get("integer"))
    if limit is not None and "maximum" not in bounds:
        bounds["maximum"] = LIMITS[limit]

    def parse(text: str) -> Any:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            return check_number(value, "value", **bounds)
        except UserError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix("value ")) from None

    parse.__name__ = "integer" if integer else "number"  # argparse names the type in some errors
    return parse


def read_text_file(path: str | Path, what: str, expected: str) -> str:
    """The text of a user's file, with one-line errors for a missing path, a folder or binary bytes."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {str(path)!r} is a folder; give {expected}")
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} does not exist; give {expected}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {str(path)!r} is not a text file; give {expected}") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {str(path)!r}: {error.strerror}") from None
