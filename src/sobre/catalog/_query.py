"""A small, safe filter language over catalog metadata.

Expressions use Python's comparison syntax but are never executed as code: they are parsed with
:mod:`ast` and only these forms are accepted::

    modality == "MR" and age >= 20 and age < 40 and diagnosis == "healthy"
    20 <= age < 40                      # chained comparisons
    site in ["paris", "lyon"]          # membership in a literal list
    not (sex == "F") or bmi > 30
    subject_id.startswith("sub-T")      # text prefix / suffix of a field (endswith)

Names are metadata fields; literals are strings, numbers, ``true``/``false`` and ``null``.
A missing value (``null``) compares false with everything except ``== null`` / ``!= null``.

>>> f = compile_filter('modality == "MR" and 20 <= age < 40', ["modality", "age"])
>>> f({"modality": "MR", "age": 31}), f({"modality": "MR", "age": 41}), f({"modality": "MR", "age": None})
(True, False, False)
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterable
from difflib import get_close_matches

from sobre.errors import ExpressionError

_CMP = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
    ast.Gt: operator.gt, ast.GtE: operator.ge,
}
_TEXT_TESTS = frozenset({"startswith", "endswith"})  # the only calls allowed: plain string tests
_CONSTANT_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


def _where(expr: str, node: ast.AST) -> str:
    col = getattr(node, "col_offset", 0)
    return f"{expr}\n{' ' * col}^"


def compile_filter(expr: str, fields: Iterable[str]) -> Callable[[dict], bool]:
    """Parse ``expr`` and return a predicate over a record dict.

    Raises
    ------
    ExpressionError
        On a syntax error (with the position), a construct that is not allowed (function calls,
        attributes, arithmetic...), or an unknown field (listing the known ones).
    """
    known = sorted(set(fields))
    if not expr or not expr.strip():
        raise ExpressionError("empty filter expression", expected='e.g. modality == "MR" and age >= 20')
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (RecursionError, MemoryError):
        raise _too_deep() from None
    except SyntaxError as exc:
        text = expr.strip()
        msg = exc.msg
        if not exc.offset:  # Python reports offset 0 when the input ends in the middle of something
            pos, msg = len(text), "the expression ends too early"
        else:
            pos = min(exc.offset - 1, len(text))
        raise ExpressionError(
            f"syntax error in filter expression at column {pos + 1}: {msg}\n  {text}\n  {' ' * pos}^",
            fix='write comparisons like: modality == "MR" and age >= 20 (strings in double quotes)',
        ) from None
    except ValueError as exc:  # e.g. null bytes, on Python versions that do not call it a SyntaxError
        raise ExpressionError(f"filter expression cannot be parsed ({exc})",
                              fix='write comparisons like: modality == "MR" and age >= 20') from None

    def literal(node: ast.AST):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
            return node.value
        if isinstance(node, ast.Name) and node.id in _CONSTANT_NAMES and node.id not in known:
            return _CONSTANT_NAMES[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
                and isinstance(node.operand.value, (int, float)):
            return -node.operand.value
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            return [literal(e) for e in node.elts]
        if isinstance(node, ast.Name):
            raise ExpressionError(
                f"'{node.id}' inside a list is neither a string nor a number",
                expected="literal values in lists, e.g. site in [\"paris\", \"lyon\"]", found=node.id,
                fix=f'put text in double quotes: "{node.id}"',
            )
        raise _not_allowed(node)

    def _not_allowed(node: ast.AST) -> ExpressionError:
        what = type(node).__name__
        text = ast.get_source_segment(expr.strip(), node) or what
        return ExpressionError(
            f"'{text}' is not allowed in a filter expression",
            expected="field names, string/number literals, comparisons (== != < <= > >= in, not in), "
                     "field.startswith(\"text\") / field.endswith(\"text\"), and/or/not",
            found=what,
        )

    def operand(node: ast.AST) -> Callable[[dict], object]:
        if isinstance(node, ast.Name) and (node.id in known or node.id not in _CONSTANT_NAMES):
            name = node.id
            if name not in known:
                close = get_close_matches(name, known, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ExpressionError(
                    f"unknown field '{name}'.{hint}", expected="one of: " + ", ".join(known), found=name,
                )
            return lambda rec: rec.get(name)
        value = literal(node)
        return lambda rec: value

    def compare(op: ast.cmpop, a, b) -> bool:
        if isinstance(op, (ast.In, ast.NotIn)):
            if not isinstance(b, list):
                raise ExpressionError("'in' needs a list on its right, e.g. site in [\"a\", \"b\"]")
            inside = a is not None and a in b
            return inside if isinstance(op, ast.In) else not inside
        if isinstance(op, (ast.Eq, ast.NotEq)):
            return _CMP[type(op)](a, b)
        if a is None or b is None:
            return False
        try:
            return _CMP[type(op)](a, b)
        except TypeError:
            return False  # e.g. a text value compared with a number: no match

    def build(node: ast.AST) -> Callable[[dict], bool]:
        if isinstance(node, ast.Expression):
            return build(node.body)
        if isinstance(node, ast.BoolOp):
            parts = [build(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda rec: all(p(rec) for p in parts)
            return lambda rec: any(p(rec) for p in parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = build(node.operand)
            return lambda rec: not inner(rec)
        if isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _CMP and not isinstance(op, (ast.In, ast.NotIn)):
                    raise _not_allowed(node)
            terms = [operand(node.left)] + [operand(c) for c in node.comparators]
            ops = list(node.ops)
            for op, right in zip(ops, node.comparators):
                if isinstance(op, (ast.In, ast.NotIn)) and not isinstance(right, (ast.List, ast.Tuple, ast.Set)):
                    text = ast.get_source_segment(expr.strip(), right) or type(right).__name__
                    raise ExpressionError(
                        "'in' needs a list of values on its right", expected='e.g. site in ["paris", "lyon"]',
                        found=text,
                    )

            def pred(rec: dict) -> bool:
                vals = [t(rec) for t in terms]
                return all(compare(op, vals[i], vals[i + 1]) for i, op in enumerate(ops))

            return pred
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in _TEXT_TESTS and isinstance(node.func.value, ast.Name):
            field = operand(node.func.value)  # a known field, or "unknown field" with the known ones
            if node.keywords or len(node.args) != 1 or not isinstance(node.args[0], ast.Constant) \
                    or not isinstance(node.args[0].value, str):
                text = ast.get_source_segment(expr.strip(), node) or "call"
                raise ExpressionError(f"'{text}': {node.func.attr} takes one string in double quotes",
                                      expected=f'e.g. subject_id.{node.func.attr}("sub-T")', found=text)
            arg, method = node.args[0].value, node.func.attr
            return lambda rec: isinstance(v := field(rec), str) and getattr(v, method)(arg)
        if isinstance(node, ast.Name) and node.id in known:
            name = node.id
            return lambda rec: bool(rec.get(name))
        if isinstance(node, ast.Name):
            operand(node)  # raises "unknown field"
        raise _not_allowed(node)

    try:
        return build(tree)
    except RecursionError:
        raise _too_deep() from None


def _too_deep() -> ExpressionError:
    return ExpressionError("filter expression is nested too deeply",
                           fix="simplify it: chain conditions with and/or instead of nesting them")
