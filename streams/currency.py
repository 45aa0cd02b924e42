"""Amounts in one reporting currency: versioned rates tables.

Features and rules compare amounts with thresholds (500,000; 10,000; a month's mean), so a
worker converts every transaction's amount into the reporting currency before either sees
it: 2,062,001.52 JPY is about 12,000 EUR, not an amount above 500,000. The original amount
and currency stay on the transaction, in reasons and on alerts.

A rates table document (YAML or JSON), versioned as rulesets are::

    name: treasury
    version: "2026-12-04"
    base: EUR                  # the reporting currency
    rates:                     # value of one unit of each currency, in the base
      USD: 0.86
      JPY: 0.0058

The worker starts with the built-in reference table (``streams/rates/reference.yaml``:
approximate, for demos and tests) or ``VIGIL_RATES_PATH``, and swaps in the tables
published on ``vigil.rates`` between micro-batches. A transaction in a currency the table
does not list goes to the dead-letter topic. A table in another base than the setting
``reporting_currency`` is refused: the rules' thresholds and the model were set in that one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vigil.errors import VigilError

__all__ = [
    "RatesDocument",
    "MAX_CURRENCIES",
    "Rates",
    "RatesError",
    "default_rates",
    "load_rates",
    "parse_rates",
    "read_rates",
]

MAX_CURRENCIES = 1_000  # ISO 4217 lists fewer than 200
# a rate outside this range is a typo (a unit of IDR is 5e-5 EUR; of KWD, 3 EUR)
MIN_RATE, MAX_RATE = 1e-9, 1e9
_CODE = r"^[A-Z]{3}$"


class RatesError(VigilError, ValueError):
    """A rates table that cannot be used."""


class RatesDocument(BaseModel):
    """``vigil.rates`` value: a currency rates table (``vigil rates validate`` checks it)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=64)
    version: str = Field(min_length=1, max_length=64)
    base: str = Field(pattern=_CODE)
    rates: dict[str, float] = Field(min_length=1, max_length=MAX_CURRENCIES)

    @field_validator("rates", mode="before")
    @classmethod
    def _ints_are_rates(cls, table: Any) -> Any:
        """YAML reads ``1`` as an int; a rate of 1 is fine (strict mode would refuse it)."""
        if isinstance(table, dict):
            return {
                k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                for k, v in table.items()
            }
        return table

    @field_validator("rates")
    @classmethod
    def _codes_and_values(cls, table: dict[str, float]) -> dict[str, float]:
        for code, rate in table.items():
            if not re.match(_CODE, code):
                raise ValueError(f"{code[:20]!r} is not an ISO-4217 code (three capital letters)")
            if not (math.isfinite(rate) and MIN_RATE <= rate <= MAX_RATE):
                raise ValueError(
                    f"rate of {code} is {rate!r}: a rate is a finite number within "
                    f"[{MIN_RATE:g}, {MAX_RATE:g}]"
                )
        return table


@dataclass(frozen=True)
class Rates:
    """A versioned rates table: ``rates[code]`` units of ``base`` per unit of ``code``."""

    name: str
    version: str
    base: str
    rates: dict[str, float]

    @property
    def label(self) -> str:
        """``name:version``, as stamped on score records and alerts."""
        return f"{self.name}:{self.version}"

    def rate(self, currency: str) -> float | None:
        """Units of ``base`` per unit of ``currency``; None where the table has none."""
        return self.rates.get(currency)


def parse_rates(document: Any) -> Rates:
    """A rates table from a parsed document; ``RatesError`` says what is wrong."""
    if not isinstance(document, dict):
        raise RatesError(f"a rates table is a mapping, not {type(document).__name__}")
    try:
        doc = RatesDocument.model_validate(document)
    except ValidationError as exc:
        raise RatesError(_describe(exc)) from None
    table = dict(doc.rates)
    if table.setdefault(doc.base, 1.0) != 1.0:
        raise RatesError(f"the base {doc.base} must have rate 1, not {table[doc.base]!r}")
    return Rates(doc.name, doc.version, doc.base, table)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "document"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "rates table: " + "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def read_rates(data: bytes | str, where: str = "rates table") -> Rates:
    """Parse a YAML or JSON document (bounded as ruleset documents are) into a table."""
    from vigil.streams.rules import RuleError, read_document

    try:
        document = read_document(data, where)
    except RuleError as exc:
        raise RatesError(str(exc)) from None
    return parse_rates(document)


def load_rates(source: str | Path) -> Rates:
    """A rates table file."""
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RatesError(f"cannot read rates table {path}: {exc.strerror or exc}") from None
    return read_rates(data, str(path))


_DEFAULT: list[Rates] = []


def default_rates() -> Rates:
    """The built-in reference table (approximate rates, for demos and tests)."""
    if not _DEFAULT:
        text = resources.files("vigil.streams.rates").joinpath("reference.yaml").read_text()
        _DEFAULT.append(read_rates(text, "built-in rates table"))
    return _DEFAULT[0]
