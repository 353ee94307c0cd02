"""Loss units: every dataset, fit and prediction says what its loss is per.

A loss is in ``nats/byte`` (byte-level models such as moeplan's proxies) or in
``nats/token`` of a named tokenizer, which knows its bytes per token when it was measured.
Token counts are that tokenizer's tokens. Converting is explicit (:func:`convert`);
combining data in two units without converting is refused, naming both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scaling.errors import UserError

NATS_PER_BYTE = "nats/byte"
NATS_PER_TOKEN = "nats/token"


@dataclass(frozen=True)
class LossUnit:
    """``nats/byte``, or ``nats/token`` of ``tokenizer`` (with ``bytes_per_token`` when known)."""

    per: str  # NATS_PER_BYTE or NATS_PER_TOKEN
    tokenizer: str | None = None
    bytes_per_token: float | None = None

    def __post_init__(self) -> None:
        if self.per not in (NATS_PER_BYTE, NATS_PER_TOKEN):
            raise UserError(f"a loss unit is {NATS_PER_BYTE!r} or {NATS_PER_TOKEN!r}, got {self.per!r}")
        if self.per == NATS_PER_TOKEN and not self.tokenizer:
            raise UserError("a loss in nats/token must name its tokenizer, e.g. 'nats/token (gpt-neox)'")
        if self.bytes_per_token is not None and not self.bytes_per_token > 0:
            raise UserError(f"bytes_per_token must be positive, got {self.bytes_per_token!r}")

    def __str__(self) -> str:
        if self.per == NATS_PER_BYTE:
            return NATS_PER_BYTE
        return f"{NATS_PER_TOKEN} ({self.tokenizer})"

    @property
    def token_name(self) -> str:
        """Whose tokens a token count is in: ``bytes``, or the tokenizer's name."""
        return "bytes" if self.per == NATS_PER_BYTE else f"{self.tokenizer} tokens"

    def to_dict(self) -> dict[str, object]:
        return {"per": self.per, "tokenizer": self.tokenizer, "bytes_per_token": self.bytes_per_token}

    @classmethod
    def from_dict(cls, document: dict[str, object]) -> LossUnit:
        return cls(document["per"], document.get("tokenizer"), document.get("bytes_per_token"))


def parse_unit(text: str) -> LossUnit:
    """``nats/byte`` or ``nats/token (TOKENIZER)``, as datasets and cards write them."""
    text = str(text).strip()
    if text == NATS_PER_BYTE:
        return LossUnit(NATS_PER_BYTE)
    if text.startswith(NATS_PER_TOKEN):
        rest = text[len(NATS_PER_TOKEN) :].strip()
        if rest.startswith("(") and rest.endswith(")") and rest[1:-1].strip():
            return LossUnit(NATS_PER_TOKEN, rest[1:-1].strip())
    raise UserError(f"cannot read loss unit {text!r}; write 'nats/byte' or 'nats/token (TOKENIZER)'")


def common_unit(units: Iterable[object], what: str = "data") -> LossUnit | None:
    """The one unit of ``units`` (strings or LossUnits), None if none is given; refuses a mix."""
    distinct = sorted({str(parse_unit(u) if isinstance(u, str) else u) for u in units if u is not None})
    distinct = [u for u in distinct if u != "nan"]
    if len(distinct) > 1:
        raise UserError(
            f"{what} mixes loss units {' and '.join(repr(u) for u in distinct)}; convert one to the other first "
            "(scaling.laws.units.convert)"
        )
    return parse_unit(distinct[0]) if distinct else None


def convert(loss: float, source: LossUnit, target: LossUnit) -> float:
    """A loss in ``source`` units expressed in ``target`` units (needs bytes per token for tokens)."""
    if str(source) == str(target):
        return loss
    per_byte = loss if source.per == NATS_PER_BYTE else loss / _bytes_per_token(source)
    return per_byte if target.per == NATS_PER_BYTE else per_byte * _bytes_per_token(target)


def _bytes_per_token(unit: LossUnit) -> float:
    if unit.bytes_per_token is None:
        raise UserError(
            f"cannot convert {unit}: the bytes per token of tokenizer {unit.tokenizer!r} are not known; "
            "measure them on the evaluation text and give bytes_per_token"
        )
    return unit.bytes_per_token
