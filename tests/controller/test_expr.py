"""Alert expressions (controller/detectors/expr.py): parsed apart from evaluation, `and`
before `or`, parentheses; what cannot be read is refused with where."""

from __future__ import annotations

import re

import pytest

from controller.detectors.expr import Compare, ExprError, Join, parse_expr, signals


def test_and_binds_tighter_than_or_and_parentheses_group() -> None:
    node = parse_expr("a > 1 or b <= 2 and c != 3")
    assert node == Join(
        "or", (Compare("a", ">", 1.0), Join("and", (Compare("b", "<=", 2.0), Compare("c", "!=", 3.0))))
    )
    grouped = parse_expr("(a > 1 or b <= 2) and c == -3.5e1")
    assert grouped == Join(
        "and", (Join("or", (Compare("a", ">", 1.0), Compare("b", "<=", 2.0))), Compare("c", "==", -35.0))
    )
    assert signals(grouped) == ["a", "b", "c"]


def test_evaluation_needs_every_signal_it_reads() -> None:
    node = parse_expr("psi_io_some > 30 and (disk_util_max_pct >= 90 or procs_blocked > 4)")
    assert node.holds({"psi_io_some": 40, "disk_util_max_pct": 95})
    assert node.holds({"psi_io_some": 40, "disk_util_max_pct": 10, "procs_blocked": 5})
    assert not node.holds({"psi_io_some": 40, "disk_util_max_pct": 10})
    assert not node.holds({"disk_util_max_pct": 95})  # a missing signal holds nothing


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a >", "expected num at the end"),
        ("a > 1 and", "expected word at the end"),
        ("a 1", "expected op at character 2"),
        ("a > 1 b > 2", "unexpected 'b' at character 6"),
        ("(a > 1", "expected ) at the end"),
        ("a > 1)", "unexpected ')'"),
        ("a > 1e999", "finite"),
        ("a > $", "cannot read '$'"),
        ("and > 1", "not 'and'"),
        ("(" * 17 + "a > 1" + ")" * 17, "nest at most 16"),
        (" or ".join(f"s{i} > 1" for i in range(33)), "at most 32 comparisons"),
        ("a > 1 " * 200, "at most 1000 characters"),
    ],
)
def test_what_cannot_be_read_is_refused_with_where(text: str, says: str) -> None:
    with pytest.raises(ExprError, match=re.escape(says)):
        parse_expr(text)
