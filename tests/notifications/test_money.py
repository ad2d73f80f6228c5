from __future__ import annotations

import pytest

from service.notifications import format_money


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        (123450, "eur", "€1,234.50"),
        (5, "usd", "$0.05"),
        (100000, "gbp", "£1,000.00"),
        (99, "cad", "CA$0.99"),
        (123450, "chf", "1,234.50 CHF"),
        (123450, "EUR", "€1,234.50"),
        (1234, "jpy", "1,234 JPY"),
        (1500000, "krw", "1,500,000 KRW"),
        (1234567, "kwd", "1,234.567 KWD"),
        (5, "bhd", "0.005 BHD"),
        (0, "eur", "€0.00"),
        (0, "jpy", "0 JPY"),
        (0, "kwd", "0.000 KWD"),
        (-150, "eur", "-€1.50"),
        (123456789012345, "eur", "€1,234,567,890,123.45"),
        # Beyond a float's 53-bit mantissa: only integer arithmetic keeps the last cent.
        (10**20 + 1, "usd", "$1,000,000,000,000,000,000.01"),
    ],
)
def test_format_money(amount: int, currency: str, expected: str) -> None:
    assert format_money(amount, currency) == expected


@pytest.mark.parametrize("currency", ["", "eu", "euro", "€", "e1r"])
def test_format_money_rejects_bad_currency(currency: str) -> None:
    with pytest.raises(ValueError, match="three-letter ISO 4217"):
        format_money(100, currency)


@pytest.mark.parametrize("amount", [12.5, True, "100"])
def test_format_money_rejects_non_integer_amount(amount: object) -> None:
    with pytest.raises(TypeError, match="int in minor units"):
        format_money(amount, "eur")  # type: ignore[arg-type]
