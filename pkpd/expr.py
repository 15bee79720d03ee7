"""Safe parser and evaluator for NONMEM-``$PK``-like parameter expressions.

Parameter files (TOML/JSON) give a parameter as a number or an expression such as ``"1.1*(WT/70)**0.75"``.
User text is **never** passed to ``eval``/``exec``: it is parsed with :func:`ast.parse` (``mode="eval"``),
every node is checked against a whitelist and compiled into closures calling the array namespace ``xp``
(``numpy`` or ``jax.numpy``) given at evaluation time; no value-dependent Python control flow, so it is
traceable under ``jax.jit``/``vmap``/``grad``.

Grammar: numeric literals (``2``, ``1e-3``; evaluated as floats); case-sensitive names not starting with
``_``; the builtin constant ``pi``; ``+ - * / **``, unary ``+ -``, parentheses; comparisons
``< <= > >= == !=`` (``0 < x < 1`` means ``0 < x and x < 1``); elementwise ``and or not``;
``a if cond else b`` (``xp.where``); functions ``exp log log10 sqrt abs floor ceil`` (1 argument),
``min max pow`` (2), ``where(cond, a, b)`` (3), by plain name with positional arguments. Booleans in
arithmetic count as 1.0/0.0 (``1.2*(SEX == 1)``); numbers used as conditions are true when non-zero.
An expression's value is always numeric.
"""

from __future__ import annotations

import ast
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import numpy

from .errors import ExpressionError

__all__ = [
    "Expression",
    "compile_expression",
    "compile_parameter_block",
    "evaluate_parameter_block",
    "referenced_columns",
    "parse_tree",
    "compile_tree",
]

MAX_LENGTH = 2000  # longest accepted expression source, in characters

_Fn = Callable[[Mapping[str, Any], Any], Any]

_FUNCTIONS = {
    "exp": 1,
    "log": 1,
    "log10": 1,
    "sqrt": 1,
    "abs": 1,
    "floor": 1,
    "ceil": 1,  # name -> arity
    "min": 2,
    "max": 2,
    "pow": 2,
    "where": 3,
}
_XP_NAME = {"min": "minimum", "max": "maximum", "pow": "power"}
_CONSTANTS = {"pi": math.pi}
_BINOPS = {ast.Add: "add", ast.Sub: "subtract", ast.Mult: "multiply", ast.Div: "divide", ast.Pow: "power"}
_CMPOPS = {
    ast.Lt: "less",
    ast.LtE: "less_equal",
    ast.Gt: "greater",
    ast.GtE: "greater_equal",
    ast.Eq: "equal",
    ast.NotEq: "not_equal",
}
_BINOP_HINTS = {
    ast.BitXor: "'^' is not supported; use '**' for powers",
    ast.FloorDiv: "'//' is not supported; use floor(a / b)",
    ast.Mod: "'%' is not supported",
    ast.BitAnd: "'&' is not supported; use 'and'",
    ast.BitOr: "'|' is not supported; use 'or'",
}
_DESCRIBE = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts/indexing",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions/generators",
    ast.JoinedStr: "f-strings",
    ast.List: "lists",
    ast.NamedExpr: "assignment expressions (':=')",
    ast.Starred: "starred arguments",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.Slice: "slices",
}


def _prefix(name: str | None) -> str:
    return f"parameter {name}: " if name else ""


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


class Expression:
    """A validated, compiled parameter expression.

    Attributes
    ----------
    source
        The original text (for a number given as a number, its ``repr``).
    names
        Free variable names referenced (dataset columns or other parameters); ``pi`` is not included.
    is_constant
        ``True`` when no names are referenced.
    name
        The parameter name used in error messages, or ``None``.
    """

    __slots__ = ("source", "names", "name", "_fn")

    def __init__(self, source: str, names: frozenset[str], fn: _Fn, name: str | None = None):
        self.source, self.names, self.name, self._fn = source, names, name, fn

    @property
    def is_constant(self) -> bool:
        return not self.names

    def evaluate(self, env: Mapping[str, Any], xp: Any = numpy) -> Any:
        """Evaluate the expression.

        Parameters
        ----------
        env
            Maps every name in :attr:`names` to a scalar or an array (numpy or jax; broadcastable).
        xp
            Array namespace (``numpy`` or ``jax.numpy``) used for every operation.

        Returns
        -------
        array
            ``xp.asarray`` of the numeric result (booleans are converted to 1.0/0.0).

        Raises
        ------
        ExpressionError
            If a referenced name is missing from ``env``.
        """
        missing = sorted(n for n in self.names if n not in env)
        if missing:
            raise ExpressionError(
                f"{_prefix(self.name)}unknown name{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} in expression {_clip(self.source)!r}"
            )
        return xp.asarray(self._fn(env, xp))

    def __repr__(self) -> str:
        return f"Expression({self.name + '=' if self.name else ''}{self.source!r})"


class _Compiler:
    """Walks a parsed tree, rejecting anything not whitelisted, and builds closures."""

    def __init__(self, source: str, name: str | None, col0: int):
        self.source, self.name, self.col0 = source, name, col0
        self.names: set[str] = set()

    def fail(self, message: str, node: ast.AST) -> NoReturn:
        snippet = ast.get_source_segment(self.source, node) or self.source
        col = getattr(node, "col_offset", 0) + self.col0 + 1
        raise ExpressionError(
            f"{_prefix(self.name)}{message}: {_clip(snippet)!r} (column {col} of {_clip(self.source.strip())!r})"
        )

    def num(self, node: ast.AST) -> _Fn:
        kind, fn = self.visit(node)
        if kind == "bool":
            return lambda env, xp: xp.where(fn(env, xp), 1.0, 0.0)
        return fn

    def cond(self, node: ast.AST) -> _Fn:
        kind, fn = self.visit(node)
        if kind == "num":
            return lambda env, xp: xp.not_equal(fn(env, xp), 0.0)
        return fn

    def visit(self, node: ast.AST) -> tuple[str, _Fn]:
        handlers: dict[type, Callable[[Any], tuple[str, _Fn]]] = {
            ast.Constant: self._constant,
            ast.Name: self._name,
            ast.BinOp: self._binop,
            ast.UnaryOp: self._unaryop,
            ast.Compare: self._compare,
            ast.BoolOp: self._boolop,
            ast.IfExp: lambda n: self._where(n.test, n.body, n.orelse),
            ast.Call: self._call,
        }
        handler = handlers.get(type(node))
        if handler is None:
            what = _DESCRIBE.get(type(node), f"syntax '{type(node).__name__}'")
            self.fail(f"{what} not allowed", node)
        return handler(node)

    def _constant(self, node: ast.Constant) -> tuple[str, _Fn]:
        v = node.value
        if isinstance(v, (str, bytes)):
            self.fail(f"{'strings' if isinstance(v, str) else 'bytes'} not allowed", node)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(f"literal {v!r} not allowed (only int/float numbers)", node)
        value = float(v)
        if not math.isfinite(value):
            self.fail("non-finite number not allowed", node)
        return "num", lambda env, xp: value

    def _name(self, node: ast.Name) -> tuple[str, _Fn]:
        ident = node.id
        if ident.startswith("_"):
            self.fail("names starting with '_' not allowed", node)
        if ident in _CONSTANTS:
            return "num", lambda env, xp, value=_CONSTANTS[ident]: value
        self.names.add(ident)
        return "num", lambda env, xp: env[ident]

    def _binop(self, node: ast.BinOp) -> tuple[str, _Fn]:
        op = _BINOPS.get(type(node.op))
        if op is None:
            hint = _BINOP_HINTS.get(type(node.op), f"operator '{type(node.op).__name__}' not allowed")
            self.fail(hint, node)
        a, b = self.num(node.left), self.num(node.right)
        return "num", lambda env, xp: getattr(xp, op)(a(env, xp), b(env, xp))

    def _unaryop(self, node: ast.UnaryOp) -> tuple[str, _Fn]:
        if isinstance(node.op, ast.Not):
            c = self.cond(node.operand)
            return "bool", lambda env, xp: xp.logical_not(c(env, xp))
        if isinstance(node.op, ast.USub):
            a = self.num(node.operand)
            return "num", lambda env, xp: xp.negative(a(env, xp))
        if isinstance(node.op, ast.UAdd):
            return "num", self.num(node.operand)
        self.fail("'~' not allowed; use 'not'", node)

    def _compare(self, node: ast.Compare) -> tuple[str, _Fn]:
        for op in node.ops:
            if type(op) not in _CMPOPS:
                self.fail(f"comparison '{type(op).__name__}' not allowed (use < <= > >= == !=)", node)
        vals = [self.num(n) for n in [node.left, *node.comparators]]
        parts = [self._comparison(a, b, _CMPOPS[type(op)]) for op, a, b in zip(node.ops, vals[:-1], vals[1:])]
        return "bool", self._reduce(parts, "logical_and")

    @staticmethod
    def _comparison(a: _Fn, b: _Fn, fname: str) -> _Fn:
        return lambda env, xp: getattr(xp, fname)(a(env, xp), b(env, xp))

    @staticmethod
    def _reduce(parts: list[_Fn], fname: str) -> _Fn:
        return lambda env, xp: functools.reduce(getattr(xp, fname), (p(env, xp) for p in parts))

    def _boolop(self, node: ast.BoolOp) -> tuple[str, _Fn]:
        fname = "logical_and" if isinstance(node.op, ast.And) else "logical_or"
        return "bool", self._reduce([self.cond(v) for v in node.values], fname)

    def _where(self, test: ast.AST, body: ast.AST, orelse: ast.AST) -> tuple[str, _Fn]:
        c, a, b = self.cond(test), self.num(body), self.num(orelse)
        return "num", lambda env, xp: xp.where(c(env, xp), a(env, xp), b(env, xp))

    def _call(self, node: ast.Call) -> tuple[str, _Fn]:
        if not isinstance(node.func, ast.Name):
            if isinstance(node.func, (ast.Attribute, ast.Subscript)):
                self.visit(node.func)  # rejects it with a specific message
            self.fail("only whitelisted functions called by plain name are allowed", node)
        fname = node.func.id
        if fname not in _FUNCTIONS:
            self.fail(f"function '{fname}' not allowed (allowed: {', '.join(sorted(_FUNCTIONS))})", node)
        if node.keywords:
            self.fail(f"keyword arguments not allowed in call to {fname}()", node)
        if any(isinstance(a, ast.Starred) for a in node.args):
            self.fail(f"starred arguments not allowed in call to {fname}()", node)
        arity = _FUNCTIONS[fname]
        if len(node.args) != arity:
            self.fail(f"{fname}() takes {arity} argument{'s' if arity > 1 else ''}, got {len(node.args)}", node)
        if fname == "where":
            return self._where(*node.args)
        args = [self.num(a) for a in node.args]
        xname = _XP_NAME.get(fname, fname)
        return "num", lambda env, xp: getattr(xp, xname)(*(f(env, xp) for f in args))


def compile_expression(source: str | int | float, *, name: str | None = None) -> Expression:
    """Parse, validate and compile one expression.

    Parameters
    ----------
    source
        Expression text, or a Python ``int``/``float`` (a constant expression).
    name
        Parameter name, used only in error messages (``"parameter CL: ..."``).

    Returns
    -------
    Expression

    Raises
    ------
    ExpressionError
        On a syntax error, a forbidden construct, an empty or over-long source, or a non-numeric value.
    """
    pre = _prefix(name)
    if isinstance(source, (int, float)) and not isinstance(source, bool):
        value = float(source)
        if not math.isfinite(value):
            raise ExpressionError(f"{pre}value {source!r} is not a finite number")
        return Expression(repr(source), frozenset(), lambda env, xp: value, name)
    if not isinstance(source, str):
        raise ExpressionError(f"{pre}expected a number or an expression string, got {type(source).__name__}")
    if len(source) > MAX_LENGTH:
        raise ExpressionError(
            f"{pre}expression is {len(source)} characters long (limit {MAX_LENGTH}): {_clip(source)!r}"
        )
    text = source.strip().replace("\r", " ").replace("\n", " ")  # keep columns; TOML multi-line strings
    if not text:
        raise ExpressionError(f"{pre}empty expression")
    col0 = len(source) - len(source.lstrip())
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        ok = exc.offset and exc.lineno == 1 and exc.offset <= len(text)
        where = f"at column {exc.offset + col0}" if ok and exc.offset else "at end of expression"
        raise ExpressionError(f"{pre}syntax error {where}: {exc.msg} in {_clip(text)!r}") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ExpressionError(f"{pre}cannot parse {_clip(text)!r}: {exc}") from None
    compiler = _Compiler(text, name, col0)
    try:
        fn = compiler.num(tree.body)
    except RecursionError:
        raise ExpressionError(f"{pre}expression too deeply nested: {_clip(text)!r}") from None
    return Expression(source, frozenset(compiler.names), fn, name)


def parse_tree(source: str) -> ast.expr:
    """The syntax tree of an expression already accepted by :func:`compile_expression`.

    Parameters
    ----------
    source
        Expression text (validated: call :func:`compile_expression` first for the user-facing messages).

    Returns
    -------
    ast.expr
        The body of ``ast.parse(text, mode="eval")``, with the same whitespace normalization as
        :func:`compile_expression` (used by :mod:`pkpd.models.user` for its symbolic linearity analysis).
    """
    text = str(source).strip().replace("\r", " ").replace("\n", " ")
    return ast.parse(text, mode="eval").body


def compile_tree(tree: ast.expr, source: str = "") -> _Fn:
    """Compile a whitelisted syntax tree (e.g. from :func:`parse_tree`, possibly with sub-trees substituted)
    into a closure ``fn(env, xp)`` returning a number or array.

    Parameters
    ----------
    tree
        Expression tree made only of the constructs :func:`compile_expression` accepts.
    source
        Text used in error messages.

    Returns
    -------
    callable
        ``fn(env, xp)``: ``env`` maps every free name to a value, ``xp`` is ``numpy`` or ``jax.numpy``.

    Raises
    ------
    ExpressionError
        If the tree contains a construct outside the whitelist.
    """
    return _Compiler(source, None, 0).num(tree)


def compile_parameter_block(spec: Mapping[str, str | int | float]) -> dict[str, Expression]:
    """Compile a block of named parameters and order them by dependency.

    Parameters
    ----------
    spec
        Parameter name -> expression text or number; expressions may reference other parameters of
        the block, e.g. ``{"KE": "CL/V", "CL": "1.1*(WT/70)**0.75", "V": 20}``.

    Returns
    -------
    dict[str, Expression]
        Iterates in a topological order (each parameter after those it references); among independent
        parameters, the order of ``spec`` is kept.

    Raises
    ------
    ExpressionError
        On an invalid name or expression, a parameter referencing itself, or a dependency cycle.
    """
    exprs: dict[str, Expression] = {}
    for key, src in spec.items():
        if not isinstance(key, str) or not key.isidentifier() or key.startswith("_") or key in _CONSTANTS:
            raise ExpressionError(
                f"invalid parameter name {key!r} (must be an identifier not starting with "
                f"'_' and not a builtin constant such as 'pi')"
            )
        exprs[key] = expr = compile_expression(src, name=key)
        if key in expr.names:
            raise ExpressionError(f"parameter {key} references itself: {_clip(expr.source)!r}")
    order: dict[str, Expression] = {}
    stack: list[str] = []

    def visit(key: str) -> None:
        if key in order:
            return
        if key in stack:
            cycle = stack[stack.index(key) :] + [key]
            raise ExpressionError(f"parameter dependency cycle: {' -> '.join(cycle)}")
        stack.append(key)
        for dep in (k for k in exprs if k in exprs[key].names):  # spec order: deterministic
            visit(dep)
        stack.pop()
        order[key] = exprs[key]

    for key in exprs:
        visit(key)
    return order


def evaluate_parameter_block(
    block: Mapping[str, Expression],
    columns: Mapping[str, Any],
    xp: Any = numpy,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a compiled block in its iteration order.

    Each parameter sees the dataset ``columns`` and the parameters computed before it. A parameter whose
    name is also a column name shadows the column for every later expression.

    Parameters
    ----------
    block
        As returned by :func:`compile_parameter_block` (iteration order must be topological).
    columns
        Column/covariate name -> scalar or array (all broadcastable against each other).
    xp
        Array namespace, ``numpy`` or ``jax.numpy``.
    overrides
        Optional parameter name -> given values (e.g. a posterior draw of an individual parameter) that
        replace the computed ones where finite (NaN: computed as usual); later parameters see the given
        values (a derived ``K = CL/V`` follows an overridden ``CL``).

    Returns
    -------
    dict[str, array]
        Parameter name -> value, every value broadcast to the common shape of ``columns`` (scalars when
        no column is an array).

    Raises
    ------
    ExpressionError
        On a name that is neither a column nor an earlier parameter, or non-broadcastable columns.
    """
    try:
        shape = numpy.broadcast_shapes(*(numpy.shape(v) for v in columns.values()))
    except ValueError as exc:
        raise ExpressionError(f"dataset columns have incompatible shapes: {exc}") from None
    env: dict[str, Any] = dict(columns)
    out: dict[str, Any] = {}
    for key, expr in block.items():
        for ref in sorted(expr.names):
            if ref not in env:
                raise ExpressionError(
                    f"parameter {key} references {ref}, which is neither a dataset column nor a parameter"
                )
        value = expr.evaluate(env, xp)
        if numpy.shape(value) != shape:
            value = xp.broadcast_to(value, shape)
        if overrides is not None and key in overrides:
            given = xp.broadcast_to(xp.asarray(overrides[key], dtype=float), shape)
            value = xp.where(xp.isfinite(given), given, value)
        env[key] = out[key] = value
    return out


def referenced_columns(block: Mapping[str, Expression]) -> set[str]:
    """Names referenced by the block that are not parameters of it (the dataset columns it needs)."""
    return set().union(*(expr.names for expr in block.values())) - set(block)
