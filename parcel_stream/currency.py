"""Currencies a manifest may declare, with indicative conversion rates to USD.

The rates are reference values for scoring (thresholds, value per kg), not for duty
assessment. Deployments that need daily rates pass their own table to ``build_features``.
"""

from __future__ import annotations

from typing import Literal, get_args

# ISO 4217 codes accepted on manifests: the currencies that e-commerce parcels are
# actually declared in. Anything else is rejected with reason ``unknown_currency``.
Currency = Literal[
    "USD", "EUR", "GBP", "CNY", "HKD", "JPY", "KRW", "TWD", "SGD", "MYR", "THB", "VND",
    "IDR", "PHP", "INR", "PKR", "BDT", "AUD", "NZD", "CAD", "MXN", "BRL", "CLP", "COP",
    "ARS", "PEN", "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "RON", "BGN", "TRY",
    "ILS", "AED", "SAR", "QAR", "KWD", "EGP", "ZAR", "NGN", "KES", "MAD", "RUB", "UAH",
]  # fmt: skip

CURRENCIES: tuple[str, ...] = get_args(Currency)

# Units of USD per one unit of the currency (indicative, 2026).
USD_PER_UNIT: dict[str, float] = {
    "USD": 1.0, "EUR": 1.08, "GBP": 1.27, "CNY": 0.138, "HKD": 0.128, "JPY": 0.0066,
    "KRW": 0.00073, "TWD": 0.031, "SGD": 0.74, "MYR": 0.21, "THB": 0.028, "VND": 0.000039,
    "IDR": 0.000062, "PHP": 0.017, "INR": 0.012, "PKR": 0.0036, "BDT": 0.0083, "AUD": 0.66,
    "NZD": 0.60, "CAD": 0.73, "MXN": 0.055, "BRL": 0.18, "CLP": 0.00105, "COP": 0.00025,
    "ARS": 0.001, "PEN": 0.27, "CHF": 1.13, "SEK": 0.095, "NOK": 0.093, "DKK": 0.145,
    "PLN": 0.25, "CZK": 0.043, "HUF": 0.0027, "RON": 0.22, "BGN": 0.55, "TRY": 0.029,
    "ILS": 0.27, "AED": 0.272, "SAR": 0.267, "QAR": 0.275, "KWD": 3.25, "EGP": 0.02,
    "ZAR": 0.054, "NGN": 0.00065, "KES": 0.0077, "MAD": 0.10, "RUB": 0.011, "UAH": 0.024,
}  # fmt: skip

assert set(USD_PER_UNIT) == set(CURRENCIES), "every accepted currency needs a rate"
