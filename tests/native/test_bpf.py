"""BPF maps and perf output read with bpf() and perf_event_open() alone: the ring parser on
bytes laid out as the kernel lays them (wrapping, lost records, garbage), and, as root, real
maps made here with BPF_MAP_CREATE (no bcc, no LLVM)."""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Iterator
from pathlib import Path

import probe_core
import pytest

SAMPLE, LOST = 9, 2  # PERF_RECORD_SAMPLE, PERF_RECORD_LOST


def sample_record(raw: bytes) -> bytes:
    """A PERF_SAMPLE_RAW record: header, u32 size, the bytes padded so the record is 8-aligned."""
    raw = raw + b"\0" * ((-(len(raw) + 4)) % 8)
    return struct.pack("<IHHI", SAMPLE, 0, 12 + len(raw), len(raw)) + raw


def lost_record(n: int) -> bytes:
    return struct.pack("<IHHQQ", LOST, 0, 24, 1, n)


def ring_with(records: bytes, size: int, start: int = 0) -> bytes:
    """records written into a ring of size bytes from position start, wrapping at the end."""
    ring = bytearray(size)
    for i, b in enumerate(records):
        ring[(start + i) % size] = b
    return bytes(ring)


def test_samples_and_lost_counts_come_out_in_order() -> None:
    recs = sample_record(b"first") + lost_record(7) + sample_record(b"second!!")
    out = probe_core.parse_perf_ring(ring_with(recs, 128), 0, len(recs))
    assert [s.rstrip(b"\0") for s in out["samples"]] == [b"first", b"second!!"]
    assert out["lost"] == 7 and out["corrupt"] == 0 and out["tail"] == len(recs)


def test_a_record_that_wraps_the_end_of_the_ring_is_read_whole() -> None:
    recs = sample_record(b"x" * 40) + sample_record(b"y" * 3)
    start = 1000  # positions only grow; the ring index wraps (1000 % 128 = 104)
    out = probe_core.parse_perf_ring(ring_with(recs, 128, start), start, start + len(recs))
    assert [s.rstrip(b"\0") for s in out["samples"]] == [b"x" * 40, b"y" * 3]
    assert out["tail"] == start + len(recs)


def test_at_most_max_samples_are_taken_and_the_tail_stops_after_them() -> None:
    one = sample_record(b"abc")
    recs = one * 5
    out = probe_core.parse_perf_ring(ring_with(recs, 256), 0, len(recs), 2)
    assert len(out["samples"]) == 2 and out["tail"] == 2 * len(one)


@pytest.mark.parametrize(
    ("records", "size", "head"),
    [
        (struct.pack("<IHH", SAMPLE, 0, 0), 64, 8),  # a zero-sized record would never advance
        (struct.pack("<IHH", SAMPLE, 0, 4000), 64, 16),  # larger than what is written
        (struct.pack("<IHHI", SAMPLE, 0, 16, 999) + b"\0" * 4, 64, 16),  # raw size past the record
        (b"\0" * 4, 64, 4),  # shorter than a header
    ],
)
def test_garbage_is_counted_and_skipped_never_read_past(records: bytes, size: int, head: int) -> None:
    out = probe_core.parse_perf_ring(ring_with(records, size), 0, head)
    assert out["samples"] == [] and out["corrupt"] == 1 and out["tail"] == head


def test_positions_that_cannot_be_are_skipped() -> None:
    assert probe_core.parse_perf_ring(b"\0" * 48, 0, 16)["corrupt"] == 1  # not a power of two
    out = probe_core.parse_perf_ring(b"\0" * 64, 100, 10)  # head behind tail
    assert out["corrupt"] == 1 and out["tail"] == 10
    out = probe_core.parse_perf_ring(b"\0" * 64, 0, 1000)  # more than the ring holds
    assert out["corrupt"] == 1 and out["tail"] == 1000
    assert probe_core.parse_perf_ring(b"\0" * 64, 5, 5) == {"samples": [], "lost": 0, "corrupt": 0, "tail": 5}


def test_a_fd_that_is_not_a_map_is_refused() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(probe_core.UnavailableError, match="BPF_OBJ_GET_INFO_BY_FD"):
            probe_core.bpf_map_items(r)
        with pytest.raises(probe_core.UnavailableError, match="power of two"):
            probe_core.BpfPerfBuffer(r, [0], 3)
    finally:
        os.close(r)
        os.close(w)


# -- real maps, made here ----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
SYS_BPF = 321  # x86_64 (the maps below are made with a raw syscall)
x86_64 = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the bpf() syscall number here is x86_64's"
)
MAP_CREATE, MAP_UPDATE_ELEM = 0, 2
HASH, PERCPU_HASH, PERF_EVENT_ARRAY = 1, 5, 4


def bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, 128)
    res = _libc.syscall(SYS_BPF, cmd, buf, 128)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(res)


def create_map(kind: int, key_size: int, value_size: int, max_entries: int, name: bytes = b"") -> int:
    # map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node, map_name[16]
    return bpf(MAP_CREATE, struct.pack("<7I16s", kind, key_size, value_size, max_entries, 0, 0, 0, name))


def update(fd: int, key: bytes, value: bytes) -> None:
    k, v = ctypes.create_string_buffer(key), ctypes.create_string_buffer(value)
    bpf(MAP_UPDATE_ELEM, struct.pack("<IIQQQ", fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0))


@pytest.fixture
def hash_map() -> Iterator[int]:
    fd = create_map(HASH, 4, 8, 16, b"test_hist")
    yield fd
    os.close(fd)


@x86_64
@pytest.mark.root
def test_a_hash_map_is_read_whole_and_bounded(hash_map: int) -> None:
    for slot in range(16):
        update(hash_map, struct.pack("<I", slot), struct.pack("<Q", slot * 10))
    info = probe_core.bpf_map_info(hash_map)
    assert info == {"type": HASH, "key_size": 4, "value_size": 8, "max_entries": 16, "name": "test_hist"}
    items = probe_core.bpf_map_items(hash_map)
    got = {struct.unpack("<I", k)[0]: struct.unpack("<Q", v)[0] for k, v in items}
    assert got == {slot: slot * 10 for slot in range(16)}


@x86_64
@pytest.mark.root
def test_a_per_cpu_map_is_refused_not_misread() -> None:
    fd = create_map(PERCPU_HASH, 4, 8, 4)
    try:
        with pytest.raises(probe_core.UnavailableError, match="per-CPU"):
            probe_core.bpf_map_items(fd)
    finally:
        os.close(fd)


@x86_64
@pytest.mark.root
def test_perf_rings_go_into_the_output_map_and_start_empty() -> None:
    from collector.sources.ebpf_loader import parse_cpu_list

    cpus = parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text())  # offline CPUs: no events
    fd = create_map(PERF_EVENT_ARRAY, 4, 4, max(cpus) + 1)
    try:
        buf = probe_core.BpfPerfBuffer(fd, cpus, 8)
        # Each CPU's slot now holds a perf event (reading a perf-event array from user
        # space is refused by design, so its presence shows as EEXIST-free updates above).
        assert buf.poll() == [] and buf.lost() == 0 and buf.corrupt() == 0
        buf.close()
        buf.close()  # twice is harmless
        assert buf.poll() == []
        with pytest.raises(probe_core.UnavailableError, match="cpu 4096"):
            probe_core.BpfPerfBuffer(fd, [4096], 8)  # no such CPU
    finally:
        os.close(fd)
