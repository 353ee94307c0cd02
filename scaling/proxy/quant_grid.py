"""The integer grid of group-wise weight quantisation, round to nearest, and bit packing.

A group of ``group_size`` weights along a matrix's input dimension shares one fp16 scale (and,
when asymmetric, one integer zero point); each weight is stored as a ``bits``-bit code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from scaling.errors import UserError
from scaling.shape.scheme import PartFormat

FP16_SMALLEST = 2.0**-24  # the smallest positive fp16 (a subnormal): a stored scale never rounds to 0


# --- the integer grid ------------------------------------------------------------------------------
def grid(groups: torch.Tensor, fmt: PartFormat, shrink: float | torch.Tensor = 1.0):
    """Scale (rounded to fp16, as stored) and zero point of each group (last dimension).

    Symmetric: codes -2^(b-1) .. 2^(b-1)-1 with scale max|w| / (2^(b-1)-1). Asymmetric: codes
    0 .. 2^b-1 spanning [min, max], with an integer zero point. ``shrink`` < 1 clips the range.
    """
    if fmt.symmetric:
        scale = shrink * groups.abs().amax(-1) / (2 ** (fmt.bits - 1) - 1)
    else:
        low, high = shrink * groups.amin(-1), shrink * groups.amax(-1)
        scale = (high - low) / (2**fmt.bits - 1)
    scale = scale.to(torch.float16).to(groups.dtype).clamp_min(FP16_SMALLEST)
    if fmt.symmetric:
        return scale, None
    zero = torch.round(-low / scale).clamp(0, 2**fmt.bits - 1)
    return scale, zero


SHRINKS = tuple(1 - 0.025 * i for i in range(21))  # 1.0 down to 0.5


def searched_grid(groups: torch.Tensor, fmt: PartFormat, norm: float = 2.4):
    """:func:`grid` with the range shrunk, per group, to minimise sum |w - q(w)|^norm (the clipping
    search of the GPTQ reference code's quantiser, norm 2.4)."""
    best_scale, best_zero = grid(groups, fmt)
    best = torch.full(groups.shape[:-1], float("inf"), dtype=groups.dtype, device=groups.device)
    for shrink in SHRINKS:
        scale, zero = grid(groups, fmt, shrink)
        z = None if zero is None else zero[..., None]
        error = (groups - decode(encode(groups, scale[..., None], z, fmt), scale[..., None], z, fmt)).abs()
        error = error.pow(norm).sum(-1)
        better = error < best
        best = torch.where(better, error, best)
        best_scale = torch.where(better, scale, best_scale)
        if zero is not None:
            best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def encode(weights: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, fmt: PartFormat) -> torch.Tensor:
    """Nearest codes (0 .. 2^bits-1, as floats) of ``weights`` on the grid."""
    if fmt.symmetric:
        half = 2 ** (fmt.bits - 1)
        return torch.round(weights / scale).clamp(-half, half - 1) + half
    return (torch.round(weights / scale) + zero).clamp(0, 2**fmt.bits - 1)


def decode(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, fmt: PartFormat) -> torch.Tensor:
    """The weights that codes stand for."""
    offset = 2 ** (fmt.bits - 1) if fmt.symmetric else zero
    return (codes - offset) * scale


@dataclass
class GroupQuant:
    """Codes ``[B, rows, in]`` (integers as floats), scales and zero points ``[B, rows, in/group]``."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    fmt: PartFormat

    def dequantize(self) -> torch.Tensor:
        g = self.fmt.group_size
        scales = self.scales.repeat_interleave(g, dim=-1)
        zeros = None if self.zeros is None else self.zeros.repeat_interleave(g, dim=-1)
        return decode(self.codes, scales, zeros, self.fmt)


def rtn(matrices: torch.Tensor, fmt: PartFormat, search: bool = False) -> GroupQuant:
    """Round to nearest, group by group, of ``[B, rows, in]`` matrices (with ``search``, on a
    range clipped to minimise the rounding error: :func:`searched_grid`)."""
    batch, rows, width = matrices.shape
    if width % fmt.group_size:
        raise UserError(f"group_size {fmt.group_size} does not divide the input width {width}")
    groups = matrices.double().reshape(batch, rows, width // fmt.group_size, fmt.group_size)
    scale, zero = searched_grid(groups, fmt) if search else grid(groups, fmt)
    codes = encode(groups, scale[..., None], None if zero is None else zero[..., None], fmt)
    return GroupQuant(codes.reshape(batch, rows, width), scale, zero, fmt)


# --- packing -------------------------------------------------------------------------------------
def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes (< 2^bits) as a little-endian bit stream, ``bits`` bits each, in whole bytes."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return codes.copy()
    if codes.size * bits % 8:
        raise ValueError(f"{codes.size} codes of {bits} bits do not fill whole bytes")
    stream = (codes[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(stream.reshape(-1), bitorder="little")


def unpack_codes(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack_codes`."""
    if bits == 8:
        return data[:count].copy()
    stream = np.unpackbits(data, bitorder="little")[: count * bits].reshape(count, bits)
    return (stream << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)
