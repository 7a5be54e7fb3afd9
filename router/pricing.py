"""Exact cost arithmetic: token counts times per-million prices, in Decimal.

Money is summed as Decimal in a context wide enough that nothing rounds, and
that context traps inexact results, so a cost either is exact or raises; floats
appear only at the wire, via ``usd_to_float``.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Context, Decimal, Inexact

from tierwise.router.config import Price
from tierwise.router.types import TokenUsage

TOKENS_PER_PRICE_UNIT = Decimal(1_000_000)  # prices are USD per million tokens

# 60 significant digits hold any realistic token count times any price; if a
# result ever needed rounding, Inexact raises instead of silently drifting.
_EXACT = Context(prec=60, traps=[Inexact])


def _tokens(name: str, value: int) -> Decimal:
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return Decimal(value)


def _per_token(price_per_mtok: Decimal, tokens: Decimal) -> Decimal:
    return _EXACT.divide(_EXACT.multiply(tokens, price_per_mtok), TOKENS_PER_PRICE_UNIT)


def cost_usd(price: Price, usage: TokenUsage) -> Decimal:
    """What ``usage`` costs at ``price``.

    Cached input tokens are a subset of the input tokens: the uncached rest is
    billed at the input price, the cached part at the cached-input price.
    """
    input_tokens = _tokens("input_tokens", usage.input_tokens)
    cached = _tokens("cached_input_tokens", usage.cached_input_tokens)
    output = _tokens("output_tokens", usage.output_tokens)
    if cached > input_tokens:
        raise ValueError(
            f"cached_input_tokens ({usage.cached_input_tokens}) is part of input_tokens "
            f"({usage.input_tokens}) and cannot exceed it"
        )
    return total_usd(
        (
            _per_token(price.input_per_mtok, _EXACT.subtract(input_tokens, cached)),
            _per_token(price.cached_input, cached),
            _per_token(price.output_per_mtok, output),
        )
    )


def expected_cost_usd(
    price: Price, input_tokens: int, expected_output_tokens: int | float | Decimal
) -> Decimal:
    """The cost to expect before a call: known input, an estimate of the output (which may be fractional)."""
    if isinstance(expected_output_tokens, float):
        # The shortest decimal that round-trips: 12.3 stays 12.3, not 12.300000000000000710...
        expected_output_tokens = Decimal(repr(expected_output_tokens))
    expected = Decimal(expected_output_tokens)
    if not expected.is_finite() or expected < 0:
        raise ValueError(f"expected_output_tokens must be a finite, non-negative number, got {expected}")
    return total_usd(
        (
            _per_token(price.input_per_mtok, _tokens("input_tokens", input_tokens)),
            _per_token(price.output_per_mtok, expected),
        )
    )


def total_usd(amounts: Iterable[Decimal]) -> Decimal:
    """The exact sum of ``amounts``."""
    total = Decimal(0)
    for amount in amounts:
        total = _EXACT.add(total, amount)
    return total


def scale_usd(amount: Decimal, factor: Decimal | int) -> Decimal:
    """``amount`` times ``factor`` (a count, a share, a price multiplier), exactly."""
    return _EXACT.multiply(amount, Decimal(factor))


def usd_to_float(amount: Decimal) -> float:
    """The nearest float, for wire formats that carry doubles; never sum these."""
    return float(amount)


def usd_str(amount: Decimal) -> str:
    """Canonical text: plain notation, no trailing zeros, no exponent ("0.000185", "12", "0")."""
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {amount}")
    text = format(_EXACT.plus(amount).normalize(_EXACT), "f")
    return "0" if text in ("-0", "0") else text
