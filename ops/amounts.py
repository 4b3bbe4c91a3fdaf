"""Amounts of ETH as an operator writes and reads them.

Owns ``parse_eth`` (decimal ETH to wei, exact) and ``format_eth`` (wei to ETH, exact).
Must not: import anything heavy (the command line parses amounts before it connects to a chain).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Final

WEI_PER_ETH: Final = 10**18


def parse_eth(text: str) -> int:
    """An amount of ETH written as a decimal (``10``, ``0.5``, ``1e-3``) in wei; at most 18 decimals."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError("is not a decimal amount of ETH") from None
    if not value.is_finite() or value < 0:
        raise ValueError("must be a finite amount of ETH, 0 or more")
    wei = value * WEI_PER_ETH
    if wei != wei.to_integral_value():
        raise ValueError("has more than 18 decimals (finer than 1 wei)")
    return int(wei)


def format_eth(wei: int) -> str:
    """Wei as ETH, exact, without trailing zeros (``10``, ``0.5``, ``0.000000000000000001``)."""
    whole, frac = divmod(wei, WEI_PER_ETH)
    return f"{whole}.{frac:018d}".rstrip("0").rstrip(".")
