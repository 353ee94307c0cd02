"""Attention heads of a planned shape: 64 dimensions each, grouped-query KV heads."""

from __future__ import annotations

HEAD_DIM = 64


def kv_heads(heads: int) -> int:
    """Grouped-query attention: the largest divisor of the head count up to a quarter of it."""
    return max(d for d in range(1, max(1, int(heads) // 4) + 1) if heads % d == 0)
