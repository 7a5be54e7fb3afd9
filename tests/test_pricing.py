from __future__ import annotations

import math
from decimal import Decimal, localcontext

import pytest

from tierwise.router.config import Price
from tierwise.router.pricing import cost_usd, expected_cost_usd, total_usd, usd_str, usd_to_float
from tierwise.router.types import TokenUsage

MINI = Price(
    input_per_mtok=Decimal("0.15"), output_per_mtok=Decimal("0.60"), cached_input_per_mtok=Decimal("0.075")
)


def test_cached_input_is_a_subset_billed_at_the_cached_price() -> None:
    price = Price(
        input_per_mtok=Decimal("2.50"), output_per_mtok=Decimal("10"), cached_input_per_mtok=Decimal("1.25")
    )
    cost = cost_usd(price, TokenUsage(input_tokens=1234, output_tokens=567, cached_input_tokens=200))
    # (1034 * 2.50 + 200 * 1.25 + 567 * 10) / 1e6 = (2585 + 250 + 5670) / 1e6
    assert cost == Decimal("0.008505")
    assert isinstance(cost, Decimal)


def test_exact_with_prices_that_floats_cannot_hold() -> None:
    cost = cost_usd(MINI, TokenUsage(input_tokens=1234, output_tokens=567, cached_input_tokens=200))
    # (1034 * 0.15 + 200 * 0.075 + 567 * 0.60) / 1e6 = (155.1 + 15 + 340.2) / 1e6
    assert cost == Decimal("0.0005103")
    assert usd_str(cost) == "0.0005103"


def test_cached_price_defaults_to_the_input_price() -> None:
    price = Price(input_per_mtok=Decimal("3"), output_per_mtok=Decimal("15"))
    with_cache = cost_usd(price, TokenUsage(input_tokens=1000, output_tokens=10, cached_input_tokens=400))
    assert (
        with_cache == cost_usd(price, TokenUsage(input_tokens=1000, output_tokens=10)) == Decimal("0.00315")
    )


def test_free_and_empty() -> None:
    assert cost_usd(Price(), TokenUsage(input_tokens=10**9, output_tokens=10**9)) == 0
    assert cost_usd(MINI, TokenUsage()) == 0


@pytest.mark.parametrize(
    ("usage", "message"),
    [
        (TokenUsage(input_tokens=10, cached_input_tokens=11), "cannot exceed"),
        (TokenUsage(input_tokens=-1), "input_tokens must not be negative"),
        (TokenUsage(output_tokens=-5), "output_tokens must not be negative"),
    ],
)
def test_impossible_usage_is_refused(usage: TokenUsage, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cost_usd(MINI, usage)


def test_expected_cost() -> None:
    assert expected_cost_usd(MINI, 1000, 500) == Decimal("0.00045")
    # A fractional estimate keeps its decimal value, not its binary approximation.
    assert expected_cost_usd(MINI, 0, 12.3) == Decimal("0.00000738")
    assert expected_cost_usd(MINI, 0, Decimal("0.5")) == Decimal("0.0000003")
    with pytest.raises(ValueError, match="finite, non-negative"):
        expected_cost_usd(MINI, 10, -1)
    with pytest.raises(ValueError, match="finite, non-negative"):
        expected_cost_usd(MINI, 10, math.inf)


def test_summing_ten_thousand_small_costs_does_not_drift() -> None:
    one = cost_usd(MINI, TokenUsage(input_tokens=7, output_tokens=3, cached_input_tokens=2))
    assert one == Decimal("0.00000270")  # (5 * 0.15 + 2 * 0.075 + 3 * 0.60) / 1e6
    assert total_usd([one] * 10_000) == Decimal("0.027")
    assert sum((one for _ in range(10_000)), Decimal(0)) == Decimal("0.027")
    # The float sum of the same costs drifts: this is what Decimal avoids.
    assert sum(usd_to_float(one) for _ in range(10_000)) != 0.027


def test_exact_even_when_the_ambient_decimal_context_is_narrow() -> None:
    with localcontext() as ctx:
        ctx.prec = 3
        cost = cost_usd(MINI, TokenUsage(input_tokens=123_456_789, output_tokens=987_654_321))
    assert cost == Decimal("611.11111095")  # 123456789 * 0.15e-6 + 987654321 * 0.6e-6


def test_wire_renderings() -> None:
    assert usd_to_float(Decimal("0.008505")) == 0.008505
    assert usd_str(Decimal("0.00850500")) == "0.008505"
    assert usd_str(Decimal("12.000")) == "12"
    assert usd_str(Decimal("1E+3")) == "1000"
    assert usd_str(Decimal("0E-12")) == "0"
    assert usd_str(Decimal("-0.0")) == "0"
    with pytest.raises(ValueError, match="not a finite amount"):
        usd_str(Decimal("NaN"))
