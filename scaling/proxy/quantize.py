"""Post-training weight quantisation of a proxy, group-wise, with real packing.

Every matrix of a :class:`~scaling.proxy.model.ProxyModel` belongs to one part of
:data:`scaling.shape.scheme.PARTS` and is stored in that part's format: integer codes of
``bits`` bits, one fp16 scale per group of ``group_size`` weights along the input dimension
and, when asymmetric, one uint8 zero point per group; or a bf16/fp16 passthrough. Norm weights
and biases are kept at fp16.

:func:`quantize_proxy` rounds the model's weights in place to exactly the values the packed
format decodes to (so evaluating the model measures the deployed weights) and returns the packed
tensors, whose byte count equals :func:`scaling.shape.accounting.scheme_weight_bytes`.

Methods: ``rtn`` (round to nearest) here, ``gptq`` in :mod:`scaling.proxy.gptq`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from scaling.errors import UserError
from scaling.proxy.gptq import gptq_proxy
from scaling.proxy.model import ProxyModel
from scaling.proxy.quant_grid import GroupQuant, pack_codes, rtn, unpack_codes
from scaling.proxy.quant_parts import WeightRef, vector_parameters, weight_refs
from scaling.shape.scheme import METHODS, PartFormat, Scheme

PASSTHROUGH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PackedWeight:
    """A quantised matrix (or expert stack) as stored: packed codes, fp16 scales, uint8 zeros."""

    name: str
    part: str
    shape: tuple[int, int, int]  # [B, rows, in]
    fmt: PartFormat
    data: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None

    @classmethod
    def from_quant(cls, ref: WeightRef, quant: GroupQuant) -> PackedWeight:
        codes = quant.codes.detach().cpu().numpy().astype(np.uint8)
        return cls(
            name=ref.name,
            part=ref.part,
            shape=tuple(codes.shape),
            fmt=quant.fmt,
            data=pack_codes(codes, quant.fmt.bits),
            scales=quant.scales.detach().cpu().numpy().astype(np.float16),
            zeros=None if quant.zeros is None else quant.zeros.detach().cpu().numpy().astype(np.uint8),
        )

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.scales.nbytes + (0 if self.zeros is None else self.zeros.nbytes))

    def codes(self) -> np.ndarray:
        return unpack_codes(self.data, self.fmt.bits, int(np.prod(self.shape))).reshape(self.shape)

    def dequantize(self) -> torch.Tensor:
        """``[B, rows, in]`` float32 weights, decoded from the packed bytes alone."""
        quant = GroupQuant(
            codes=torch.from_numpy(self.codes().astype(np.float64)),
            scales=torch.from_numpy(self.scales.astype(np.float64)),
            zeros=None if self.zeros is None else torch.from_numpy(self.zeros.astype(np.float64)),
            fmt=self.fmt,
        )
        return quant.dequantize().float()


@dataclass
class QuantizedProxy:
    """What :func:`quantize_proxy` stored: packed matrices, passthrough matrices and vectors."""

    scheme: Scheme
    method: str
    packed: list[PackedWeight]
    passthrough_bytes: dict[str, int] = field(default_factory=dict)  # per part
    vector_bytes: int = 0

    @property
    def quantised_params(self) -> int:
        return int(sum(np.prod(p.shape) for p in self.packed))

    def part_bytes(self) -> dict[str, int]:
        """Stored bytes per part, and ``vectors``."""
        totals = dict(self.passthrough_bytes)
        for packed in self.packed:
            totals[packed.part] = totals.get(packed.part, 0) + packed.nbytes
        totals["vectors"] = self.vector_bytes
        return totals

    @property
    def packed_weight_bytes(self) -> int:
        """Every byte a device stores for the weights."""
        return int(sum(self.part_bytes().values()))


@torch.no_grad()
def quantize_proxy(
    model: ProxyModel,
    scheme: Scheme,
    method: str = "rtn",
    calibration: torch.Tensor | None = None,
    batch_size: int = 16,
) -> QuantizedProxy:
    """Quantise ``model`` in place to ``scheme``; returns the packed weights.

    Args:
        model: A trained proxy (float32); its weights become the values the format decodes to.
        scheme: The format of each part (checked against the model's shape).
        method: ``rtn`` or ``gptq`` (which needs ``calibration``).
        calibration: ``[n, seq_len]`` token ids from the training split, for ``gptq``.
        batch_size: Sequences per forward pass while calibrating.
    """
    if method not in METHODS:
        raise UserError(f"unknown quantisation method {method!r}; choose {' or '.join(METHODS)}")
    if method == "gptq" and calibration is None:
        raise UserError("method gptq needs calibration tokens from the training split")
    scheme.check(model.arch)
    refs = weight_refs(model)
    result = QuantizedProxy(scheme=scheme, method=method, packed=[])
    # passthrough matrices and vectors first, so that GPTQ calibrates on them as deployed
    for ref in refs:
        fmt = scheme.format(ref.part)
        if not fmt.quantised:
            ref.parameter.data.copy_(ref.parameter.data.to(PASSTHROUGH_DTYPES[fmt.dtype]))
            result.passthrough_bytes[ref.part] = result.passthrough_bytes.get(ref.part, 0) + 2 * ref.parameter.numel()
    for vector in vector_parameters(model):
        vector.data.copy_(vector.data.to(torch.float16))
        result.vector_bytes += 2 * vector.numel()
    quantised = [ref for ref in refs if scheme.format(ref.part).quantised]
    if method == "gptq":
        quants = gptq_proxy(model, quantised, scheme, calibration, batch_size)
    else:
        quants = {}
        for ref in quantised:
            quants[ref.name] = rtn(ref.matrices(), scheme.format(ref.part))
            ref.write(quants[ref.name].dequantize())
    result.packed = [PackedWeight.from_quant(ref, quants[ref.name]) for ref in quantised]
    return result
