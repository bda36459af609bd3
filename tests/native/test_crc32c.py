"""crc32c against a bit-at-a-time reference, on both the SSE4.2 and the table path."""

from __future__ import annotations

import probe_core
from hypothesis import given, settings
from hypothesis import strategies as st


def reference(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_check_value() -> None:
    assert probe_core.crc32c(b"123456789") == 0xE3069283
    assert probe_core._crc32c_software(b"123456789") == 0xE3069283
    assert probe_core.crc32c(b"") == 0


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), split=st.integers(min_value=0, max_value=300))
def test_matches_reference_and_continues(data: bytes, split: int) -> None:
    expected = reference(data)
    assert probe_core.crc32c(data) == expected
    assert probe_core._crc32c_software(data) == expected
    cut = split % (len(data) + 1)
    assert probe_core.crc32c(data[cut:], probe_core.crc32c(data[:cut])) == expected
