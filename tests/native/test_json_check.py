"""probe_core.json_check: the strict RFC 8259 pass that guards ingest before msgspec.

Each rule has literal cases pinning the reason, the JSON path and the byte offset. The
properties check that anything json.dumps writes is accepted with the right node count and
depth, that no truncation is ever accepted, and that on random and mutated bytes the checker
agrees with json.loads: it never accepts what json.loads (or msgspec) refuses, and refuses
what json.loads accepts only by its stricter rules (integer and double range, surrogates,
UTF-8 only, no NaN or Infinity).

Throughput, measured on the development VM (2 vCPUs, Python 3.11, g++ 12 Release build,
one thread) on a batch of snapshot-like nested dicts of ints, floats and short strings
(json.dumps, ensure_ascii=False), best of repeated calls, in MB of input per second (the
ranges are across runs on the shared machine):

    document   json_check    msgspec.json.decode   json.loads
    64 KiB     1400-1470     376-406               161-166
    8 MiB      1410-1500     132-154                86-93
"""

from __future__ import annotations

import codecs
import json
from typing import Any

import msgspec
import probe_core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.native.test_stub import _typeddict_keys

DEPTH = 64
NODES = 1_000_000


def check(doc: bytes, max_depth: int = DEPTH, max_nodes: int = NODES) -> probe_core.JsonCheck:
    return probe_core.json_check(doc, max_depth, max_nodes)


def refusal(doc: bytes, max_depth: int = DEPTH, max_nodes: int = NODES) -> tuple[Any, ...]:
    r = check(doc, max_depth, max_nodes)
    assert r["ok"] is False, doc
    return r["error"], r["path"], r["offset"]


# --- the result --------------------------------------------------------------------


def test_result_has_the_stub_keys_and_none_when_ok() -> None:
    good, bad = check(b'{"a": [1, 2]}'), check(b"[1,")
    assert set(good) == set(bad) == _typeddict_keys("JsonCheck")
    assert good == {"ok": True, "nodes": 5, "depth": 2, "error": None, "path": None, "offset": None}
    assert bad["ok"] is False and isinstance(bad["error"], str) and isinstance(bad["offset"], int)


@pytest.mark.parametrize(
    ("doc", "nodes", "depth"),
    [
        (b"null", 1, 0),
        (b' "x" ', 1, 0),
        (b"-0.5e-3", 1, 0),
        (b"[]", 1, 1),
        (b"{}", 1, 1),
        (b"[[[]]]", 3, 3),
        (b'{"a":{},"b":[]}', 5, 2),
        (b'{"a": [1, 2, {"b": null}]}', 8, 3),
        (b'\t\r\n [1, "x", true, false, null, -0.5e-3] \n', 7, 1),
        (b'{"a": 1, "a": 2}', 5, 1),  # duplicate keys are JSON; what they mean is the schema's business
    ],
)
def test_counts_on_accepted_documents(doc: bytes, nodes: int, depth: int) -> None:
    r = check(doc)
    assert (r["ok"], r["nodes"], r["depth"]) == (True, nodes, depth)


# --- structure ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "error", "path", "offset"),
    [
        (b"", "empty document", "$", 0),
        (b" \n\t", "empty document", "$", 3),
        (b"1 2", "trailing data", "$", 2),
        (b"{} x", "trailing data", "$", 3),
        (b"[1]\x00", "trailing data", "$", 3),
        (b"[1,]", "expected a value", "$[1]", 3),
        (b"[,1]", "expected a value", "$[0]", 1),
        (b'{"a":1,}', "expected a string key", "$", 7),
        (b"{1:2}", "expected a string key", "$", 1),
        (b"{'a':1}", "expected a string key", "$", 1),
        (b'{"a" 1}', "expected ':'", "$.a", 5),
        (b'{"a":}', "expected a value", "$.a", 5),
        (b"[1 2]", "expected ',' or ']'", "$", 3),
        (b"[1}", "expected ',' or ']'", "$", 2),
        (b'{"a":1 "b":2}', "expected ',' or '}'", "$", 7),
        (b'{"a":1]', "expected ',' or '}'", "$", 6),
        (b"[", "unexpected end of input", "$[0]", 1),
        (b"{", "unexpected end of input", "$", 1),
        (b'{"a":[', "unexpected end of input", "$.a[0]", 6),
        (b'{"a"', "unexpected end of input", "$.a", 4),
        (b"[1", "unexpected end of input", "$", 2),
        (b"\xef\xbb\xbf{}", "expected a value", "$", 0),  # a BOM: RFC 8259 section 8.1
        (b"\x0b1", "expected a value", "$", 0),  # vertical tab is not JSON whitespace
        (b"\xa01", "expected a value", "$", 0),
        (b"]", "expected a value", "$", 0),
    ],
)
def test_structure(doc: bytes, error: str, path: str, offset: int) -> None:
    assert refusal(doc) == (error, path, offset)


@pytest.mark.parametrize(
    ("doc", "error", "offset"),
    [
        (b"tru", "unexpected end of input", 3),
        (b"nul", "unexpected end of input", 3),
        (b"trUe", "invalid literal", 0),
        (b"truex", "invalid literal", 0),
        (b"nulll", "invalid literal", 0),
        (b"True", "invalid literal", 0),
        (b"NaN", "invalid literal", 0),
        (b"Infinity", "invalid literal", 0),
        (b"undefined", "invalid literal", 0),
        (b"-Infinity", "invalid number", 1),
    ],
)
def test_literals(doc: bytes, error: str, offset: int) -> None:
    assert refusal(doc) == (error, "$", offset)


# --- numbers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "error", "offset"),
    [
        (b"01", "leading zero in number", 0),
        (b"-01", "leading zero in number", 0),
        (b"00", "leading zero in number", 0),
        (b"+1", "invalid number", 0),
        (b".5", "invalid number", 0),
        (b"-.5", "invalid number", 1),
        (b"- 1", "invalid number", 1),
        (b"1.", "unexpected end of input", 2),
        (b"1.e5", "invalid number", 2),
        (b"1.5.2", "invalid number", 3),
        (b"1e", "unexpected end of input", 2),
        (b"1e+", "unexpected end of input", 3),
        (b"1e+x", "invalid number", 3),
        (b"1ee5", "invalid number", 2),
        (b"-", "unexpected end of input", 1),
        (b"0x10", "invalid number", 1),
        (b"12abc", "invalid number", 2),
        (b"1-2", "invalid number", 1),
    ],
)
def test_number_grammar(doc: bytes, error: str, offset: int) -> None:
    assert refusal(doc) == (error, "$", offset)


@pytest.mark.parametrize("doc", [b"[1.]", b"[1e]", b"[1e+]", b"[-]"])
def test_number_cut_short_inside_a_container(doc: bytes) -> None:
    assert refusal(doc)[:2] == ("invalid number", "$[0]")


@pytest.mark.parametrize(
    "doc",
    [
        b"0",
        b"-0",
        b"18446744073709551615",  # 2^64 - 1
        b"-9223372036854775808",  # -2^63
        b"9999999999999999999",
        b"-999999999999999999",
        b"18446744073709551616.0",  # a fraction makes it a double
        b"1.7976931348623157e308",  # DBL_MAX
        b"1.7976931348623158e308",  # rounds down to DBL_MAX
        b"-1.7976931348623157e308",
        b"0.001e311",
        b"10e307",
        b"1e-999",  # underflow is zero, which is finite
        b"5e-324",
        b"0e99999",
        b"0.000e99999999999999999999",
        b"1e-99999999999999999999",
        b"1E+2",
        b"1.0e+308",
    ],
)
def test_numbers_in_range(doc: bytes) -> None:
    assert check(doc)["ok"], doc


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        (b"18446744073709551616", "integer out of range"),
        (b"99999999999999999999", "integer out of range"),
        (b"100000000000000000000", "integer out of range"),
        (b"-9223372036854775809", "integer out of range"),
        (b"-10000000000000000000", "integer out of range"),
        (b"1e999", "number out of range"),
        (b"-1e999", "number out of range"),
        (b"1.7976931348623159e308", "number out of range"),
        (b"1000e306", "number out of range"),
        (b"0.01e311", "number out of range"),
        (b"1e99999999999999999999", "number out of range"),
    ],
)
def test_numbers_out_of_range(doc: bytes, error: str) -> None:
    assert refusal(doc) == (error, "$", 0)


def test_out_of_range_names_the_path_and_the_number_start() -> None:
    assert refusal(b'{"a":[1,{"b":1e999}]}') == ("number out of range", "$.a[1].b", 13)
    assert refusal(b'{"events":[1,2,3,01]}') == ("leading zero in number", "$.events[3]", 17)


# --- strings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        b'"\\" \\\\ \\/ \\b \\f \\n \\r \\t"',
        b'"\\u0000 \\u00e9 \\uFFFF \\uD7FF \\uE000"',
        b'"\\uD83D\\uDE00 \\udbff\\udfff"',  # surrogate pairs, either case
        b'"\x7f"',  # DEL is not a control character to JSON
        '"é € 😀 \ud7ff \ue000 \U0010ffff"'.encode(),
        b'"' + b"x" * 1000 + "é".encode() + b"y" * 13 + b'"',
    ],
)
def test_strings_accepted(doc: bytes) -> None:
    assert check(doc)["ok"], doc


@pytest.mark.parametrize(
    ("doc", "error", "offset"),
    [
        (b'"a\x01"', "control character in string", 2),
        (b'"\t"', "control character in string", 1),
        (b'"abcdefghijklmnop\n"', "control character in string", 17),
        (b'"\\x"', "invalid escape", 1),
        (b'"\\\'"', "invalid escape", 1),
        (b'"\\U0041"', "invalid escape", 1),
        (b'"\\u12"', "invalid \\u escape", 1),
        (b'"\\u12', "unexpected end of input", 5),
        (b'"\\', "unexpected end of input", 2),
        (b'"\\ud800"', "lone surrogate", 1),
        (b'"\\udc00"', "lone surrogate", 1),
        (b'"\\uDE00\\uD83D"', "lone surrogate", 1),
        (b'"ab\\ud800\\u0041"', "lone surrogate", 3),
        (b'"\\ud800\\ud800"', "lone surrogate", 1),
        (b'"\\ud800x"', "lone surrogate", 1),
        (b'"\\ud800\\n"', "lone surrogate", 1),
        (b'"\\ud800\\uzz00"', "invalid \\u escape", 7),
        (b'"\\ud800', "unexpected end of input", 7),
        (b'"\\ud800\\', "unexpected end of input", 8),
        (b'"\\ud800\\u', "unexpected end of input", 9),
        (b'"\\ud800\\udc0', "unexpected end of input", 12),
        (b'"abc', "unexpected end of input", 4),
        (b'"abcdefghijklmnopqrstuvwxyz', "unexpected end of input", 27),
        (b'"\xc0\xaf"', "invalid UTF-8", 1),  # overlong "/"
        (b'"\xc1\xbf"', "invalid UTF-8", 1),
        (b'"\xe0\x80\xaf"', "invalid UTF-8", 1),
        (b'"\xe0\x9f\xbf"', "invalid UTF-8", 1),
        (b'"\xf0\x80\x80\xaf"', "invalid UTF-8", 1),
        (b'"\xf0\x8f\xbf\xbf"', "invalid UTF-8", 1),
        (b'"\xed\xa0\x80"', "invalid UTF-8", 1),  # U+D800 encoded
        (b'"\xed\xbf\xbf"', "invalid UTF-8", 1),  # U+DFFF encoded
        (b'"\xf4\x90\x80\x80"', "invalid UTF-8", 1),  # U+110000
        (b'"\xf5\x80\x80\x80"', "invalid UTF-8", 1),
        (b'"\xff"', "invalid UTF-8", 1),
        (b'"\x80"', "invalid UTF-8", 1),
        (b'"\xc3"', "invalid UTF-8", 1),  # cut by the closing quote
        (b'"\xe2\x82"', "invalid UTF-8", 1),
        (b'"\xe2\x82\xe2\x82\xac"', "invalid UTF-8", 1),
        (b'"\xe2\x82', "unexpected end of input", 3),
        (b'"\xf0\x9f\x98', "unexpected end of input", 4),
        (b'"abcdefghijkl\xc0\xaf"', "invalid UTF-8", 13),
        ('"ééééééééé'.encode() + b'\xed\xa0\x80"', "invalid UTF-8", 19),
    ],
)
def test_strings_refused(doc: bytes, error: str, offset: int) -> None:
    assert refusal(doc) == (error, "$", offset)


def test_problem_inside_a_key_names_its_object() -> None:
    assert refusal(b'{"a\x01":1}') == ("control character in string", "$", 3)
    assert refusal(b'{"a":{"b\\x":1}}') == ("invalid escape", "$.a", 8)
    assert refusal(b'{"a":1,"b\xff":2}') == ("invalid UTF-8", "$", 9)
    assert refusal(b'{"a":1,"b') == ("unexpected end of input", "$", 9)


# --- paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        (
            b'{"snapshots":[{"sources":{"psi":{"data":{"cpu":"\xff"}}}}]}',
            "$.snapshots[0].sources.psi.data.cpu",
        ),
        (b'{"events":[0,1,2,"\\q"]}', "$.events[3]"),
        (b'{"we.ird key":{"x":[1,tru]}}', '$["we.ird key"].x[1]'),
        (b'{"a\\"b\\\\c\\nd\\u0001":x}', '$["a\\"b\\\\c\\nd\\u0001"]'),
        (b'{"\\u0061b":x}', "$.ab"),  # named by its value, not its spelling
        ('{"café":x}'.encode(), '$["café"]'),
        (b'{"\\ud83d\\ude00":x}', '$["\U0001f600"]'),
        (b'{"1a":x}', '$["1a"]'),
        (b'{"":x}', '$[""]'),
        (b'{"_x1":x}', "$._x1"),
        (b'{"a":1,"b":[[],[{}, [x]]]}', "$.b[1][1][0]"),
        (b'[{"a":1},{"b":2},{"c":x}]', "$[2].c"),
    ],
)
def test_paths(doc: bytes, path: str) -> None:
    assert refusal(doc)[1] == path


def test_long_keys_are_cut_to_64_bytes() -> None:
    key = "k" * 100
    assert refusal(f'{{"{key}":x}}'.encode())[1] == "$." + "k" * 64 + "..."
    odd = "a" + "é" * 40  # 81 bytes; byte 64 falls inside an "é"
    assert refusal(f'{{"{odd}":x}}'.encode())[1] == '$["' + "a" + "é" * 31 + '..."]'
    exact = "k" * 64
    assert refusal(f'{{"{exact}":x}}'.encode())[1] == "$." + exact


# --- limits ------------------------------------------------------------------------


def test_depth_limit_is_inclusive() -> None:
    assert check(b"[[]]", max_depth=2)["ok"]
    r = check(b"[[]]", max_depth=1)
    assert (r["error"], r["path"], r["offset"], r["depth"]) == ("nested deeper than 1", "$[0]", 1, 2)
    assert check(b"1", max_depth=0)["ok"]
    assert refusal(b"{}", max_depth=0) == ("nested deeper than 0", "$", 0)
    assert refusal(b'{"a":{"b":[]}}', max_depth=2) == ("nested deeper than 2", "$.a.b", 10)


def test_node_limit_counts_values_and_keys() -> None:
    assert check(b"[1,2,3]", max_nodes=4)["ok"]
    r = check(b"[1,2,3]", max_nodes=3)
    assert (r["error"], r["path"], r["offset"], r["nodes"]) == ("more than 3 values", "$[2]", 5, 4)
    assert check(b'{"a":1}', max_nodes=3)["ok"]
    assert refusal(b'{"a":1}', max_nodes=2) == ("more than 2 values", "$.a", 5)
    assert refusal(b'{"a":1}', max_nodes=1) == ("more than 1 values", "$", 1)
    assert refusal(b"1", max_nodes=0) == ("more than 0 values", "$", 0)


def test_deep_document_is_refused_at_the_depth_limit() -> None:
    n = 100_000
    r = check(b"[" * n + b"]" * n, max_depth=DEPTH)
    assert (r["ok"], r["error"], r["offset"], r["depth"]) == (False, "nested deeper than 64", 64, 65)
    assert r["nodes"] == 65  # it stopped there instead of scanning the rest
    assert r["path"] == "$" + "[0]" * 64
    r = check(b'{"a":' * n + b"1" + b"}" * n, max_depth=DEPTH)
    assert r["error"] == "nested deeper than 64" and r["path"] == "$" + ".a" * 64


def test_a_million_levels_do_not_touch_the_c_stack() -> None:
    n = 1_000_000
    r = check(b"[" * n + b"]" * n, max_depth=n)
    assert (r["ok"], r["depth"], r["nodes"]) == (True, n, n)
    assert check(b"[" * n, max_depth=n)["error"] == "unexpected end of input"


def test_five_million_empty_objects_are_refused_at_the_node_limit() -> None:
    n = 5_000_000
    bomb = b"[" + b"{}," * (n - 1) + b"{}]"
    r = check(bomb, max_nodes=100_000)
    assert (r["error"], r["path"], r["nodes"]) == ("more than 100000 values", "$[99999]", 100_001)
    assert r["offset"] == 1 + 3 * 99_999
    assert check(bomb, max_nodes=n + 1)["nodes"] == n + 1


# --- truncation --------------------------------------------------------------------

SAMPLE = {
    "snapshots": [
        {
            "host": "node-1",
            "ts": 1.7e9,
            "n": -12,
            "big": 18446744073709551615,
            "floats": [5e-324, 1.7976931348623157e308, -0.0, 1e-7],
            "flags": [True, False, None],
            "text": 'caf\u00e9 \u20ac \U0001f600 "q" \\ / \n\t\x01',
        }
    ],
    "": {},
    "e": [],
}


@pytest.mark.parametrize("ensure_ascii", [True, False], ids=["escaped", "utf8"])
def test_truncation_at_every_offset_is_an_error(ensure_ascii: bool) -> None:
    _truncations_are_all_refused(json.dumps(SAMPLE, ensure_ascii=ensure_ascii).encode())


def _truncations_are_all_refused(doc: bytes) -> None:
    assert check(doc)["ok"]
    for i in range(len(doc)):
        r = check(doc[:i])
        assert r["ok"] is False, i
        assert r["error"] in ("unexpected end of input", "empty document"), (i, r)
        assert r["offset"] == i, (i, r)


# --- properties --------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(), children, max_size=6),
    max_leaves=40,
)
json_containers = st.lists(json_values, max_size=6) | st.dictionaries(st.text(), json_values, max_size=6)
dumps_options = st.sampled_from(
    [
        {},
        {"ensure_ascii": False},
        {"indent": 2},
        {"separators": (",", ":")},
        {"indent": "\t", "ensure_ascii": False},
    ]
)


def _nodes(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + sum(1 + _nodes(x) for x in v.values())
    if isinstance(v, list):
        return 1 + sum(_nodes(x) for x in v)
    return 1


def _depth(v: Any) -> int:
    if isinstance(v, dict):
        return 1 + max(map(_depth, v.values()), default=0)
    if isinstance(v, list):
        return 1 + max(map(_depth, v), default=0)
    return 0


class _Pairs(list[Any]):
    """An object as json.loads saw it, duplicate keys kept, so nodes can be counted."""


def _pairs_nodes(v: Any) -> int:
    if isinstance(v, _Pairs):
        return 1 + sum(1 + _pairs_nodes(x) for _, x in v)
    if isinstance(v, list):
        return 1 + sum(_pairs_nodes(x) for x in v)
    return 1


def _stricter_by_design(doc: bytes, error: str | None) -> bool:
    """Whether json.loads accepting doc while json_check refuses it is one of the rules."""
    if error in ("integer out of range", "number out of range", "lone surrogate"):
        return True
    if b"NaN" in doc or b"Infinity" in doc or b"\x00" in doc:
        return True  # json.loads takes NULs as a sign of UTF-16 or UTF-32 and decodes those
    try:
        doc.decode()
    except UnicodeDecodeError:
        return True  # json.loads decodes with surrogatepass
    return doc.startswith(codecs.BOM_UTF8)


def _agrees_with_python(doc: bytes) -> None:
    r = check(doc)
    try:
        loaded = json.loads(doc, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        assert not r["ok"], doc
        return
    if not r["ok"]:
        assert _stricter_by_design(doc, r["error"]), (doc, r)
        return
    assert r["nodes"] == _pairs_nodes(loaded), doc
    msgspec.json.decode(doc)


@settings(max_examples=300, deadline=None)
@given(json_values, dumps_options)
def test_everything_json_dumps_writes_is_accepted(value: Any, options: dict[str, Any]) -> None:
    r = check(json.dumps(value, **options).encode())
    assert (r["ok"], r["nodes"], r["depth"]) == (True, _nodes(value), _depth(value)), r


@settings(max_examples=100, deadline=None)
@given(json_containers)
def test_every_truncation_of_a_random_document_is_refused(value: Any) -> None:
    _truncations_are_all_refused(json.dumps(value, ensure_ascii=False).encode())


# Single bytes and short runs that JSON and its near misses are made of.
PUNCT = b'{}[]:,"\\/ \n\t\r0123456789-+.eEuabdfnrtxDC'
TOKENS = [
    *(bytes([c]) for c in PUNCT),
    b"true",
    b"false",
    b"null",
    b"\\u",
    b"\\ud83d",
    b"\\ude00",
    b"e308",
    b"18446744073709551616",
    "é".encode(),
    "😀".encode(),
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xff",
    b"\x00",
    b"\x1f",
    b"\x7f",
]
token_docs = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64) | token_docs)
def test_agrees_with_python_json_on_random_bytes(doc: bytes) -> None:
    _agrees_with_python(doc)


@settings(max_examples=500, deadline=None)
@given(json_values, st.data())
def test_agrees_with_python_json_on_mutated_documents(value: Any, data: st.DataObject) -> None:
    doc = bytearray(json.dumps(value, ensure_ascii=data.draw(st.booleans())).encode())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(doc)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.sampled_from(list(PUNCT)) | st.integers(0, 255))
        if op == "insert" or at == len(doc):
            doc.insert(at, byte)
        elif op == "delete":
            del doc[at]
        else:
            doc[at] = byte
    _agrees_with_python(bytes(doc))
