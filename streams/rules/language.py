"""The rule expression language: parsed into a typed expression tree, evaluated per
micro-batch on numpy columns. User text is never passed to ``eval``/``exec``.

Grammar (lowest precedence first)::

    expr     := or
    or       := and ("or" and)*
    and      := not ("and" not)*
    not      := "not" not | compare
    compare  := sum (("<"|"<="|">"|">="|"=="|"!=") sum | ["not"] "in" sum)?
    sum      := product (("+"|"-") product)*
    product  := unary (("*"|"/"|"%") unary)*
    unary    := "-" unary | primary
    primary  := NUMBER | STRING | "true" | "false" | "null" | NAME | NAME "(" args ")"
              | "lists." NAME | "[" literals "]" | "(" expr ")"

Names are features or transaction fields. Missing numbers are NaN, and so is a division
by zero: every comparison with a missing value is false, so a rule never fires on data it
does not have.

Whatever compiles, a worker can evaluate: an expression is at most ``MAX_EXPRESSION_CHARS``
long and ``MAX_TOKENS`` tokens, nests at most ``MAX_NESTING`` parentheses, ``not``, ``-`` or
calls deep, and its tree is at most ``MAX_DEPTH`` deep (chains of ``and``/``or`` are one
node, so a long flat list of conditions is fine). Beyond, it is a clear error with the
column, never a ``RecursionError``.

>>> ctx = Context({"amount": NUM, "country": STR}, {"risky": frozenset({"KP", "IR"})})
>>> e = compile_expression("amount * 2 > 100 and country in lists.risky", ctx)
>>> e.type
'bool'
>>> cols = {"amount": np.array([10.0, 60.0, 70.0]), "country": np.array(["KP", "KP", "DE"], object)}
>>> e.eval(cols, 3).tolist()
[False, True, False]
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Any

import numpy as np

from vigil.errors import VigilError

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPRESSION_CHARS",
    "MAX_NESTING",
    "MAX_TOKENS",
    "NUM",
    "STR",
    "BOOL",
    "Context",
    "Expr",
    "ExpressionError",
    "as_mask",
    "compile_expression",
]

NUM, STR, BOOL = "num", "str", "bool"
Columns = Mapping[str, np.ndarray]

MAX_EXPRESSION_CHARS = 8_192
MAX_TOKENS = 2_000
MAX_NESTING = 32  # parentheses, calls, not, unary minus
MAX_DEPTH = 64  # of the expression tree (an a + b + c ... chain is one level per term)


class ExpressionError(VigilError, ValueError):
    """A rule expression is invalid; ``column`` is 1-based within the expression text."""

    def __init__(self, message: str, column: int | None = None) -> None:
        self.column = column
        super().__init__(message if column is None else f"{message} (at column {column})")


@dataclass(frozen=True)
class Context:
    """What an expression may refer to: typed names and named lists."""

    names: Mapping[str, str]  # name -> NUM | STR | BOOL
    lists: Mapping[str, frozenset[Any]] = field(default_factory=dict)


# ---------------------------------------------------------------------------- tokens

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>\d[\d_]*(?:\.\d[\d_]*)?(?:[eE][+-]?\d+)?)
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
    | (?P<op><=|>=|==|!=|[-+*/%<>(),\[\]])
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}


@dataclass(frozen=True)
class _Tok:
    kind: str  # num | str | name | op | kw | end
    text: str
    col: int


def _tokenize(text: str) -> list[_Tok]:
    toks, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            col = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            raise ExpressionError(f"unexpected character {text[col - 1]!r}", col)
        kind = m.lastgroup or "op"
        value = m.group(kind)
        col = m.start(kind) + 1
        if kind == "name" and value in _KEYWORDS:
            kind = "kw"
        toks.append(_Tok(kind, value, col))
        pos = m.end()
    toks.append(_Tok("end", "", len(text) + 1))
    return toks


# ---------------------------------------------------------------------------- tree


class Expr:
    """A typed node; ``eval(columns, n)`` returns an array of length n (or a scalar)."""

    type: str
    names: frozenset[str] = frozenset()
    depth: int = 1  # of the tree below and including this node

    def eval(self, cols: Columns, n: int) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class _Const(Expr):
    value: Any
    type: str

    def eval(self, cols: Columns, n: int) -> Any:
        return self.value


@dataclass(frozen=True)
class _Name(Expr):
    name: str
    type: str

    @property
    def names(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({self.name})

    def eval(self, cols: Columns, n: int) -> Any:
        return cols[self.name]


@dataclass(frozen=True)
class _Op(Expr):
    fn: Callable[..., Any]
    args: tuple[Expr, ...]
    type: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "depth", 1 + max((a.depth for a in self.args), default=0))

    @property
    def names(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset().union(*(a.names for a in self.args))

    def eval(self, cols: Columns, n: int) -> Any:
        with np.errstate(all="ignore"):  # overflow is inf, 0/0 NaN: defined, not errors
            return self.fn(*(a.eval(cols, n) for a in self.args))


@dataclass(frozen=True)
class _In(Expr):
    item: Expr
    members: frozenset[Any]
    negate: bool
    type: str = BOOL

    def __post_init__(self) -> None:
        object.__setattr__(self, "depth", 1 + self.item.depth)

    @property
    def names(self) -> frozenset[str]:  # type: ignore[override]
        return self.item.names

    def eval(self, cols: Columns, n: int) -> Any:
        values = self.item.eval(cols, n)
        members = self.members
        if np.ndim(values) == 0:
            hit = np.full(n, values in members)
        else:  # object arrays (strings, None) are not safe for np.isin
            hit = np.fromiter((v in members for v in values), dtype=bool, count=len(values))
        return ~hit if self.negate else hit


def _as_bool(x: Any, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(x, dtype=bool), (n,))


def _cmp(op: str) -> Callable[[Any, Any], Any]:
    ops: dict[str, Callable[[Any, Any], Any]] = {
        "<": np.less,
        "<=": np.less_equal,
        ">": np.greater,
        ">=": np.greater_equal,
        "==": np.equal,
        "!=": np.not_equal,
    }
    return ops[op]


def _all(*xs: Any) -> Any:
    return functools.reduce(np.logical_and, xs)


def _any(*xs: Any) -> Any:
    return functools.reduce(np.logical_or, xs)


def _divide(x: Any, y: Any) -> Any:
    return np.where(np.asarray(y) == 0, np.nan, np.divide(x, y))


def _isnull(x: Any) -> Any:
    if isinstance(x, np.ndarray) and x.dtype == object:
        return np.fromiter((v is None for v in x), dtype=bool, count=len(x))
    return np.isnan(np.asarray(x, dtype=float))


_FUNCTIONS: dict[str, tuple[tuple[str, ...], str, Callable[..., Any]]] = {
    # name: (argument types, result type, implementation)
    "abs": ((NUM,), NUM, np.abs),
    "min": ((NUM, NUM), NUM, np.fmin),  # fmin/fmax: a missing side yields the other
    "max": ((NUM, NUM), NUM, np.fmax),
    "log1p": ((NUM,), NUM, np.log1p),
    "coalesce": ((NUM, NUM), NUM, lambda x, d: np.where(np.isnan(x), d, x)),
    "is_null": (("any",), BOOL, _isnull),
}


# ---------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str, ctx: Context) -> None:
        self.toks = _tokenize(text)
        if len(self.toks) > MAX_TOKENS:
            raise ExpressionError(
                f"expression too long: {len(self.toks) - 1} tokens, at most {MAX_TOKENS}",
                self.toks[MAX_TOKENS].col,
            )
        self.i = 0
        self.ctx = ctx
        self.nesting = 0

    def nest(self, col: int) -> None:
        """Enter a nested construct (parentheses, a call, not, unary minus)."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise ExpressionError(f"expression nested too deeply (over {MAX_NESTING} levels)", col)

    def node(self, node: Expr, col: int) -> Expr:
        if node.depth > MAX_DEPTH:
            raise ExpressionError(
                f"expression too deep (its tree is over {MAX_DEPTH} levels): split it into "
                "several rules or use 'in [...]'",
                col,
            )
        return node

    @property
    def tok(self) -> _Tok:
        return self.toks[self.i]

    def take(self, text: str | None = None) -> _Tok:
        tok = self.tok
        if text is not None and tok.text != text:
            found = "end of expression" if tok.kind == "end" else repr(tok.text)
            raise ExpressionError(f"expected {text!r}, found {found}", tok.col)
        self.i += 1
        return tok

    def at(self, *texts: str) -> bool:
        return self.tok.kind in ("op", "kw") and self.tok.text in texts

    def parse(self) -> Expr:
        node = self.or_()
        if self.tok.kind != "end":
            raise ExpressionError(f"unexpected {self.tok.text!r}", self.tok.col)
        return node

    def _bools(self, op: str, sub: Callable[[], Expr], fn: Callable[..., Any]) -> Expr:
        """``a op b op c ...`` as one n-ary node (a flat chain adds one level, not n)."""
        col = self.tok.col
        items = [sub()]
        while self.at(op):
            self.take()
            items.append(sub())
        if len(items) == 1:
            return items[0]
        for side in items:
            _expect(side, BOOL, f"'{op}'", col)
        return self.node(_Op(fn, tuple(items), BOOL), col)

    def or_(self) -> Expr:
        return self._bools("or", self.and_, _any)

    def and_(self) -> Expr:
        return self._bools("and", self.not_, _all)

    def not_(self) -> Expr:
        if self.at("not"):
            col = self.take().col
            self.nest(col)
            inner = self.not_()
            self.nesting -= 1
            _expect(inner, BOOL, "'not'", col)
            return self.node(_Op(np.logical_not, (inner,), BOOL), col)
        return self.compare()

    def compare(self) -> Expr:
        left = self.sum_()
        tok = self.tok
        if self.at("<", "<=", ">", ">=", "==", "!="):
            self.take()
            right = self.sum_()
            if tok.text in ("==", "!="):
                if left.type != right.type and "null" not in (left.type, right.type):
                    raise ExpressionError(
                        f"cannot compare {left.type} with {right.type} using {tok.text!r}", tok.col
                    )
            else:
                _expect(left, NUM, repr(tok.text), tok.col)
                _expect(right, NUM, repr(tok.text), tok.col)
            return self.node(_Op(_cmp(tok.text), (left, right), BOOL), tok.col)
        negate = False
        if self.at("not") and self.toks[self.i + 1].text == "in":
            self.take()
            negate = True
        if self.at("in"):
            self.take()
            members = self.members()
            return self.node(_In(left, members, negate), tok.col)
        if negate:
            raise ExpressionError("expected 'in' after 'not'", tok.col)
        return left

    def members(self) -> frozenset[Any]:
        tok = self.tok
        if tok.kind == "name" and tok.text.startswith("lists."):
            self.take()
            name = tok.text.split(".", 1)[1]
            if name not in self.ctx.lists:
                raise ExpressionError(
                    f"unknown list {name!r}{_suggest(name, self.ctx.lists)}", tok.col
                )
            return self.ctx.lists[name]
        if self.at("["):
            self.take()
            items = []
            while not self.at("]"):
                lit = self.primary()
                if not isinstance(lit, _Const):
                    raise ExpressionError("a list literal holds only constants", tok.col)
                items.append(lit.value)
                if not self.at("]"):
                    self.take(",")
            self.take("]")
            return frozenset(items)
        raise ExpressionError("'in' needs lists.NAME or a [literal, list]", tok.col)

    def _arith(self, ops: dict[str, Callable[..., Any]], sub: Callable[[], Expr]) -> Expr:
        node = sub()
        while self.at(*ops):
            tok = self.take()
            right = sub()
            _expect(node, NUM, repr(tok.text), tok.col)
            _expect(right, NUM, repr(tok.text), tok.col)
            node = self.node(_Op(ops[tok.text], (node, right), NUM), tok.col)
        return node

    def sum_(self) -> Expr:
        return self._arith({"+": np.add, "-": np.subtract}, self.product)

    def product(self) -> Expr:
        return self._arith({"*": np.multiply, "/": _divide, "%": np.fmod}, self.unary)

    def unary(self) -> Expr:
        if self.at("-"):
            tok = self.take()
            self.nest(tok.col)
            inner = self.unary()
            self.nesting -= 1
            _expect(inner, NUM, "'-'", tok.col)
            if isinstance(inner, _Const):
                return _Const(-inner.value, NUM)
            return self.node(_Op(np.negative, (inner,), NUM), tok.col)
        return self.primary()

    def primary(self) -> Expr:
        tok = self.take()
        if tok.kind == "num":
            return _Const(float(tok.text.replace("_", "")), NUM)
        if tok.kind == "str":
            body = tok.text[1:-1]
            return _Const(re.sub(r"\\(.)", r"\1", body), STR)
        if tok.kind == "kw" and tok.text in ("true", "false"):
            return _Const(tok.text == "true", BOOL)
        if tok.kind == "kw" and tok.text == "null":
            return _Const(None, "null")
        if tok.text == "(":
            self.nest(tok.col)
            node = self.or_()
            self.take(")")
            self.nesting -= 1
            return node
        if tok.kind == "name":
            if self.at("("):
                return self.call(tok)
            if tok.text.startswith("lists."):
                raise ExpressionError("a list can only follow 'in'", tok.col)
            kind = self.ctx.names.get(tok.text)
            if kind is None:
                raise ExpressionError(
                    f"unknown name {tok.text!r}{_suggest(tok.text, self.ctx.names)}", tok.col
                )
            return _Name(tok.text, kind)
        found = "end of expression" if tok.kind == "end" else repr(tok.text)
        raise ExpressionError(f"expected a value, found {found}", tok.col)

    def call(self, name: _Tok) -> Expr:
        spec = _FUNCTIONS.get(name.text)
        if spec is None:
            raise ExpressionError(
                f"unknown function {name.text!r}{_suggest(name.text, _FUNCTIONS)}", name.col
            )
        arg_types, result, fn = spec
        self.take("(")
        self.nest(name.col)
        args: list[Expr] = []
        while not self.at(")"):
            args.append(self.or_())
            if not self.at(")"):
                self.take(",")
        self.take(")")
        self.nesting -= 1
        if len(args) != len(arg_types):
            raise ExpressionError(
                f"{name.text}() takes {len(arg_types)} argument(s), got {len(args)}", name.col
            )
        for arg, want in zip(args, arg_types, strict=True):
            if want != "any":
                _expect(arg, want, f"{name.text}()", name.col)
        return self.node(_Op(fn, tuple(args), result), name.col)


def _expect(node: Expr, kind: str, where: str, col: int) -> None:
    if node.type != kind:
        raise ExpressionError(f"{where} needs {kind}, got {node.type}", col)


def _suggest(name: str, known: Mapping[str, Any] | dict[str, Any]) -> str:
    close = get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def compile_expression(text: str, ctx: Context) -> Expr:
    """Parse and type-check ``text``; raises :class:`ExpressionError` with the column."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"expression too long: {len(text)} characters, at most {MAX_EXPRESSION_CHARS}"
        )
    return _Parser(text, ctx).parse()


def as_mask(expr: Expr, cols: Columns, n: int) -> np.ndarray:
    """Evaluate a boolean expression to a writable mask of length n."""
    return np.array(_as_bool(expr.eval(cols, n), n))
