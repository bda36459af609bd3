"""Alert expressions of an operator's own, in the Prometheus habit but over a host's
signals: comparisons of a signal with a number, joined by ``and`` and ``or`` (``and``
binds tighter), with parentheses.

    psi_io_some > 30 and (disk_util_max_pct >= 90 or procs_blocked > 4)

``parse_expr`` is pure and refuses what it cannot read with the position named; an
expression is evaluated at each sample of a stretch (every one must hold, for ``for``).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controller.detectors.base import Culprit, Finding
from controller.detectors.evidence import Evidence
from controller.errors import ControllerError

MAX_EXPR = 1000  # characters
MAX_TERMS = 32
MAX_DEPTH = 16  # parentheses within parentheses
_TOKEN = re.compile(
    r"(?:(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<op>>=|<=|==|!=|>|<)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<paren>[()]))"
)
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class ExprError(ControllerError):
    pass


@dataclass(frozen=True)
class Compare:
    signal: str
    op: str
    value: float

    def holds(self, values: Mapping[str, float]) -> bool:
        v = values.get(self.signal)
        return v is not None and _OPS[self.op](v, self.value)


@dataclass(frozen=True)
class Join:
    op: str  # "and" or "or"
    parts: tuple[Node, ...]

    def holds(self, values: Mapping[str, float]) -> bool:
        test = all if self.op == "and" else any
        return test(p.holds(values) for p in self.parts)


Node = Compare | Join


def signals(node: Node) -> list[str]:
    if isinstance(node, Compare):
        return [node.signal]
    return list(dict.fromkeys(s for p in node.parts for s in signals(p)))


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExprError(f"cannot read {text[pos : pos + 20]!r} at character {pos}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def parse_expr(text: str) -> Node:
    """The expression as a tree; ExprError names what is wrong and where."""
    if not text.strip():
        raise ExprError("an empty expression")
    if len(text) > MAX_EXPR:
        raise ExprError(f"an expression is at most {MAX_EXPR} characters")
    toks = _tokens(text)
    pos = 0
    terms = 0
    depth = 0

    def peek() -> tuple[str, str, int] | None:
        return toks[pos] if pos < len(toks) else None

    def take(kind: str, value: str | None = None) -> tuple[str, str, int]:
        nonlocal pos
        t = peek()
        if t is None or t[0] != kind or (value is not None and t[1] != value):
            where = f"at character {t[2]}" if t else "at the end"
            raise ExprError(f"expected {value or kind} {where}")
        pos += 1
        return t

    def joined(op: str, sub: Callable[[], Node]) -> Node:
        parts = [sub()]
        while (t := peek()) is not None and t[0] == "word" and t[1] == op:
            take("word", op)
            parts.append(sub())
        return parts[0] if len(parts) == 1 else Join(op, tuple(parts))

    def atom() -> Node:
        nonlocal terms, depth
        t = peek()
        if t is not None and t[0] == "paren" and t[1] == "(":
            take("paren", "(")
            depth += 1
            if depth > MAX_DEPTH:
                raise ExprError(f"parentheses nest at most {MAX_DEPTH} deep")
            node = disjunction()
            depth -= 1
            take("paren", ")")
            return node
        name = take("word")[1]
        if name in ("and", "or"):
            raise ExprError(f"expected a signal, not {name!r}")
        op = take("op")[1]
        number = float(take("num")[1])
        if not math.isfinite(number):
            raise ExprError(f"{name}: a finite number")
        terms += 1
        if terms > MAX_TERMS:
            raise ExprError(f"at most {MAX_TERMS} comparisons")
        return Compare(name, op, number)

    def conjunction() -> Node:
        return joined("and", atom)

    def disjunction() -> Node:
        return joined("or", conjunction)

    node = disjunction()
    if (t := peek()) is not None:
        raise ExprError(f"unexpected {t[1]!r} at character {t[2]}")
    return node


MAX_ALERT_SAMPLES = 900  # how far back an alert's onset is looked for (a window's points)


def alert_finding(
    ev: Evidence, name: str, text: str, node: Node, confidence: float, summary: str | None
) -> Finding | None:
    """The alert's finding when its expression holds at the window's newest sample, with
    ``since`` the first sample of the trailing stretch in which it held at every sample
    (its `for` is judged from it); None when it does not hold now."""
    names = signals(node)
    newest = {s: pts[0][1] for s in names if (pts := ev.tail(s, 1)) and pts[0][0] >= ev.end}
    if not node.holds(newest):
        return None  # the common answer, from one point a signal
    rows: dict[float, dict[str, float]] = {}
    for s in names:
        for t, v in ev.tail(s, MAX_ALERT_SAMPLES):
            rows.setdefault(t, {})[s] = v
    times = sorted(rows)[-MAX_ALERT_SAMPLES:]
    since = times[-1]
    for t in reversed(times):
        if not node.holds(rows[t]):
            break
        since = t
    now = rows[times[-1]]
    first = next(s for s in names if s in now)  # one it read holds: a comparison of a signal there
    return Finding(
        family=name,
        method="rule",
        signal=first,
        value=now[first],
        baseline=None,
        threshold=node.value if isinstance(node, Compare) else None,
        score=confidence,
        culprit=Culprit("host", "host", {"rule": name, "expr": text, "since": since}, key=f"rule:{name}"),
        summary=summary or f"{name}: {text}",
        supporting=names,
        expected=names,
    )
