"""Ruleset documents (YAML or JSON) compiled into a vectorised, versioned ruleset.

A document::

    ruleset: seed
    version: "1"
    lists:
      high_risk_countries: [IR, KP]
    rules:
      - name: large_transfer
        typology: large_value
        when: amount > 500_000
        score: 0.8                      # or bands: [{when: ..., score: ...}, {score: ...}]
        reason: "amount {amount:,.2f} {currency} exceeds 500,000"

A ruleset evaluates a whole micro-batch at once: each rule's condition is one numpy
expression over the batch's columns; reasons are rendered only for the rows that fired.

Documents come from users and from a topic anyone with write access can append to, so
what ``read_document`` and ``parse_ruleset`` accept is bounded (``LIMITS``): its size, its
nesting, the number of rules, lists and list items, expression size (see
``streams.rules.language``), reason length and format widths. Whatever they accept, a
worker can evaluate: no document reaches a ``RecursionError`` or an unbounded output.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vigil.streams.rules.base import Firing, RuleError
from vigil.streams.rules.language import (
    NUM,
    STR,
    Context,
    Expr,
    ExpressionError,
    as_mask,
    compile_expression,
)

__all__ = [
    "RulesetDocument",
    "LIMITS",
    "TX_FIELDS",
    "Ruleset",
    "CompiledRule",
    "load_ruleset",
    "parse_ruleset",
    "read_document",
    "default_ruleset",
]

# Transaction fields a rule may use besides the features. ``amount`` is in the reporting
# currency (``reporting_currency``, the rates table's base); ``original_amount`` and
# ``currency`` are as paid, and ``paid`` is the two as text ("2,062,001.52 JPY").
TX_FIELDS: dict[str, str] = {
    "amount": NUM,
    "original_amount": NUM,
    "paid": STR,
    "reporting_currency": STR,
    "ts_ms": NUM,
    "currency": STR,
    "channel": STR,
    "country": STR,
    "account_id": STR,
    "counterparty_id": STR,
    "device_id": STR,
    "merchant_category": STR,
}


class Limits:
    """What a ruleset document may hold at most."""

    document_bytes = 1_048_576
    nesting = 16  # YAML/JSON collections inside each other (a ruleset needs 5)
    nodes = 1_000_000  # scalars and collections in the document
    rules = 1_000
    bands = 32  # per rule
    lists = 256
    list_items = 100_000  # per list
    item_chars = 256  # per list item
    reason_chars = 1_000
    format_width = 64  # width and precision in a reason's {name:spec}


LIMITS = Limits()


class _Band(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    when: str | None = None
    score: float = Field(ge=0, le=1)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    typology: str = Field(min_length=1, max_length=64)
    when: str
    score: float | None = Field(default=None, ge=0, le=1)
    bands: list[_Band] | None = Field(default=None, min_length=1, max_length=LIMITS.bands)
    reason: str = Field(max_length=LIMITS.reason_chars)
    code: str | None = Field(default=None, pattern=r"^[A-Z][A-Z0-9_]*$")
    enabled: bool = True

    @model_validator(mode="after")
    def _one_score(self) -> _Rule:
        if (self.score is None) == (self.bands is None):
            raise ValueError("give exactly one of 'score' or 'bands'")
        return self


class RulesetDocument(BaseModel):
    """``vigil.rules`` value: a ruleset document (``vigil rules validate`` checks it)."""

    model_config = ConfigDict(extra="forbid")
    ruleset: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    version: str = Field(min_length=1, max_length=64)
    mode: Literal["live", "shadow"] = "live"  # shadow: evaluated and recorded, never alerts
    lists: dict[
        str,
        list[Annotated[str, Field(max_length=LIMITS.item_chars)] | float],
    ] = Field(default_factory=dict, max_length=LIMITS.lists)
    rules: list[_Rule] = Field(min_length=1, max_length=LIMITS.rules)

    @model_validator(mode="after")
    def _list_sizes(self) -> RulesetDocument:
        for name, items in self.lists.items():
            if len(items) > LIMITS.list_items:
                raise ValueError(
                    f"list {name!r} has {len(items)} items, at most {LIMITS.list_items}"
                )
        return self


class _Reason:
    """A reason template: ``{name}`` or ``{name:spec}`` of known names, nothing else
    (no attribute access, indexing or conversions: templates are user text)."""

    def __init__(self, text: str, names: Mapping[str, str], where: str) -> None:
        self.text = text
        self.parts: list[tuple[str, str | None, str]] = []  # (literal, name, spec)
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise RuleError(f"{where}, field 'reason': {exc}") from None
        for literal, name, spec, conversion in parsed:
            if name is not None:
                if conversion or not name.isidentifier() or name not in names:
                    hint = "" if name in names else " (unknown name)"
                    raise RuleError(f"{where}, field 'reason': bad placeholder {{{name}}}{hint}")
                sample = 1234.5 if names[name] == NUM else "X"
                widths = [int(n) for n in re.findall(r"\d+", spec or "")]
                if any(w > LIMITS.format_width for w in widths):
                    raise RuleError(
                        f"{where}, field 'reason': format {{{name}:{spec}}}: width and "
                        f"precision are at most {LIMITS.format_width}"
                    )
                try:
                    format(sample, spec or "")
                except ValueError as exc:
                    raise RuleError(
                        f"{where}, field 'reason': format {{{name}:{spec}}}: {exc}"
                    ) from None
            self.parts.append((literal, name, spec or ""))
        self.names = frozenset(n for _, n, _ in self.parts if n)

    def render(self, cols: Mapping[str, np.ndarray], i: int) -> str:
        out = []
        for literal, name, spec in self.parts:
            out.append(literal)
            if name is not None:
                value = cols[name][i]
                if value is None or (isinstance(value, float) and np.isnan(value)):
                    out.append("n/a")
                else:
                    out.append(format(value.item() if hasattr(value, "item") else value, spec))
        return "".join(out)


@dataclass(frozen=True)
class CompiledRule:
    name: str
    typology: str
    code: str
    when: Expr
    bands: tuple[tuple[Expr | None, float], ...]
    reason: _Reason

    @property
    def names(self) -> frozenset[str]:
        used = set(self.when.names) | set(self.reason.names)
        for cond, _ in self.bands:
            if cond is not None:
                used |= cond.names
        return frozenset(used)


@dataclass(frozen=True)
class Ruleset:
    """A compiled, versioned ruleset. ``names`` are the columns it reads."""

    name: str
    version: str
    rules: tuple[CompiledRule, ...]
    mode: str = "live"

    @property
    def label(self) -> str:
        """``name:version``, as stamped on score records."""
        return f"{self.name}:{self.version}"

    @property
    def names(self) -> frozenset[str]:
        return frozenset().union(*(r.names for r in self.rules))

    def evaluate_batch(self, cols: Mapping[str, np.ndarray], n: int) -> list[list[Firing]]:
        """Firings per row, in rule order, for a batch of ``n`` rows."""
        firings: list[list[Firing]] = [[] for _ in range(n)]
        for rule in self.rules:
            mask = as_mask(rule.when, cols, n)
            if not mask.any():
                continue
            score = np.full(n, np.nan)
            open_ = mask.copy()
            for cond, band_score in rule.bands:  # first matching band wins
                hit = open_ if cond is None else open_ & as_mask(cond, cols, n)
                score[hit] = band_score
                open_ &= ~hit
            for i in np.flatnonzero(mask & ~open_):
                firings[i].append(
                    Firing(
                        rule.name,
                        rule.typology,
                        float(score[i]),
                        rule.code,
                        rule.reason.render(cols, i),
                    )
                )
        return firings


def _where(doc: Any, loc: Sequence[Any]) -> str:
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = doc.get("rules") if isinstance(doc, dict) else None
        name = None
        if isinstance(rules, list) and loc[1] < len(rules) and isinstance(rules[loc[1]], dict):
            name = rules[loc[1]].get("name")
        field = ".".join(str(p) for p in loc[2:]) or "(rule)"
        return f"rule {name or '#' + str(loc[1] + 1)!r}, field {field!r}"
    return f"field {'.'.join(str(p) for p in loc) or '(document)'!r}"


def parse_ruleset(doc: Any, names: Mapping[str, str]) -> Ruleset:
    """Validate and compile a parsed document against the available typed ``names``."""
    try:
        parsed = RulesetDocument.model_validate(doc)
    except ValidationError as exc:
        problems = [f"{_where(doc, e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)]
        raise RuleError("invalid ruleset: " + "; ".join(problems)) from None
    lists = {k: frozenset(v) for k, v in parsed.lists.items()}
    ctx = Context(names, lists)
    seen: set[str] = set()
    rules = []
    for rule in parsed.rules:
        where = f"rule {rule.name!r}"
        if rule.name in seen:
            raise RuleError(f"{where}: duplicate rule name")
        seen.add(rule.name)

        def compile_(text: str, field: str, where: str = where) -> Expr:
            try:
                expr = compile_expression(text, ctx)
            except ExpressionError as exc:
                raise RuleError(f"{where}, field {field!r}: {exc}") from None
            if expr.type != "bool":
                raise RuleError(f"{where}, field {field!r}: must be a condition, got {expr.type}")
            return expr

        when = compile_(rule.when, "when")
        if rule.bands is not None:
            bands = tuple(
                (None if b.when is None else compile_(b.when, f"bands.{i}.when"), b.score)
                for i, b in enumerate(rule.bands)
            )
        else:
            bands = ((None, float(rule.score or 0.0)),)
        if not rule.enabled:
            continue
        rules.append(
            CompiledRule(
                rule.name,
                rule.typology,
                rule.code or rule.name.upper(),
                when,
                bands,
                _Reason(rule.reason, names, where),
            )
        )
    return Ruleset(parsed.ruleset, parsed.version, tuple(rules), parsed.mode)


def read_document(data: bytes | str, where: str = "ruleset") -> Any:
    """A YAML or JSON document (JSON is YAML), within ``LIMITS``: its size, and its nesting
    and node count checked on the parser's event stream before anything is built (PyYAML
    builds nested collections recursively). Anchors and aliases are refused: they can make
    a small document expand without bound."""
    size = len(data.encode("utf-8") if isinstance(data, str) else data)
    if size > LIMITS.document_bytes:
        raise RuleError(f"{where} is {size} bytes, at most {LIMITS.document_bytes}")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise RuleError(f"{where} is not UTF-8 text: {exc}") from None
    try:
        depth = 0
        for nodes, event in enumerate(yaml.parse(text, Loader=yaml.SafeLoader), 1):
            at = event.start_mark
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise RuleError(
                    f"{where}, line {at.line + 1} column {at.column + 1}: YAML anchors and "
                    "aliases are not allowed in rule documents"
                )
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > LIMITS.nesting:
                    raise RuleError(
                        f"{where}, line {at.line + 1} column {at.column + 1}: nested over "
                        f"{LIMITS.nesting} levels deep"
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            if nodes > LIMITS.nodes:
                raise RuleError(f"{where}: over {LIMITS.nodes} YAML nodes")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError(f"{where} is not valid YAML/JSON: {exc}") from None


def load_ruleset(source: str | Path, names: Mapping[str, str]) -> Ruleset:
    """Read a YAML or JSON ruleset file (JSON is YAML) and compile it."""
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RuleError(f"cannot read ruleset {str(path)!r}: {exc.strerror}") from None
    return parse_ruleset(read_document(data, f"ruleset {str(path)!r}"), names)


DEFAULT_RULESET = "aml"


def default_ruleset(names: Mapping[str, str], name: str = DEFAULT_RULESET) -> Ruleset:
    """A ruleset shipped with Vigil (``streams/rules/rulesets/NAME.yaml``)."""
    text = resources.files("vigil.streams.rules").joinpath("rulesets", f"{name}.yaml").read_text()
    return parse_ruleset(yaml.safe_load(text), names)
