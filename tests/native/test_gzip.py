"""gzip_compress and gzip_decompress, including the decompression-bomb guard."""

from __future__ import annotations

import gzip
import zlib

import probe_core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def test_roundtrip_and_interop_with_python_gzip() -> None:
    data = b"incidentlab " * 10000
    packed = probe_core.gzip_compress(data, 6)
    assert gzip.decompress(packed) == data
    assert probe_core.gzip_decompress(gzip.compress(data), len(data)) == data
    assert len(packed) < len(data) // 20


def test_empty_payload_roundtrips() -> None:
    assert probe_core.gzip_decompress(probe_core.gzip_compress(b""), 0) == b""


def test_bomb_is_refused_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20), 9)  # 64 MiB from about 64 KiB
    assert len(bomb) < 100_000
    with pytest.raises(probe_core.OutputLimitError, match="exceeds the limit of 1048576"):
        probe_core.gzip_decompress(bomb, 1 << 20)


def test_exact_limit_is_allowed_and_one_less_is_not() -> None:
    data = bytes(range(256)) * 400
    packed = gzip.compress(data)
    assert probe_core.gzip_decompress(packed, len(data)) == data
    with pytest.raises(probe_core.OutputLimitError):
        probe_core.gzip_decompress(packed, len(data) - 1)


def test_concatenated_members_are_one_stream() -> None:
    assert probe_core.gzip_decompress(gzip.compress(b"ab") + gzip.compress(b"cd"), 10) == b"abcd"


def test_truncated_corrupt_and_trailing_garbage() -> None:
    packed = gzip.compress(b"hello world" * 100)
    with pytest.raises(probe_core.DecompressError, match="truncated"):
        probe_core.gzip_decompress(packed[:-5], 1 << 20)
    with pytest.raises(probe_core.DecompressError):
        probe_core.gzip_decompress(b"not gzip at all", 1 << 20)
    with pytest.raises(probe_core.DecompressError):
        probe_core.gzip_decompress(packed + b"garbage", 1 << 20)
    with pytest.raises(probe_core.DecompressError, match="truncated"):
        probe_core.gzip_decompress(b"", 1 << 20)
    flipped = bytearray(packed)
    flipped[-6] ^= 0xFF  # the CRC32 trailer
    with pytest.raises(probe_core.DecompressError):
        probe_core.gzip_decompress(bytes(flipped), 1 << 20)


def test_bad_level_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="level"):
        probe_core.gzip_compress(b"x", 11)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4096), level=st.integers(min_value=0, max_value=9))
def test_roundtrip_property(data: bytes, level: int) -> None:
    assert probe_core.gzip_decompress(probe_core.gzip_compress(data, level), len(data)) == data


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=1, max_size=4096), limit=st.integers(min_value=0, max_value=8192))
def test_limit_property(data: bytes, limit: int) -> None:
    packed = gzip.compress(data)
    if len(data) <= limit:
        assert probe_core.gzip_decompress(packed, limit) == data
    else:
        with pytest.raises(probe_core.OutputLimitError):
            probe_core.gzip_decompress(packed, limit)


@settings(max_examples=500, deadline=None)
@given(garbage=st.binary(max_size=2048))
def test_garbage_never_crashes(garbage: bytes) -> None:
    try:
        out = probe_core.gzip_decompress(garbage, 4096)
    except probe_core.DecompressError:
        return
    assert len(out) <= 4096
    assert gzip.decompress(garbage) == out


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=1, max_size=2048), cut=st.integers(min_value=0), flip=st.integers(min_value=0))
def test_damaged_streams_are_detected(data: bytes, cut: int, flip: int) -> None:
    packed = gzip.compress(data)
    truncated = packed[: cut % len(packed)]
    with pytest.raises(probe_core.DecompressError):
        probe_core.gzip_decompress(truncated, 1 << 20)
    damaged = bytearray(packed)
    damaged[flip % len(damaged)] ^= 0x01
    try:
        out = probe_core.gzip_decompress(bytes(damaged), 1 << 20)
    except probe_core.DecompressError:
        return
    # A flip in header fields zlib does not check (mtime, OS, XFL) still yields the data.
    assert out == data
    assert zlib.crc32(out) == zlib.crc32(data)
