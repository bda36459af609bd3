"""A snapshot's extract straight from the wire's raw JSON: what hot state takes per sample.

``extract`` (controller/detectors/evidence.py) reads a snapshot whose sources' data
were decoded into dicts: every process, cgroup and interface row built as Python
objects, and each table encoded again to be kept. Here each source's data is decoded
with msgspec structs that name only the fields evidence reads (everything else is
skipped at C speed), and the tables are kept as the raw JSON of their rows, joined,
never built. The small sources (host, PSI, eBPF counters, GPUs) go through the same
per-source functions ``extract`` uses.

Equal by construction where it answers, and held equal by tests
(tests/controller/test_rawextract.py): the same values, the same tables once decoded.
Where the data is not of the shapes these structs take (a row that is not an object,
a field of another type), it answers None and hot state takes the full path, which
gives that data's extract or its error exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from msgspec import Raw, Struct

from collector.wire import SnapshotEnvelope
from controller.detectors.evidence import (
    MAX_ROWS,
    Extract,
    Tables,
    Values,
    _add,
    _num,
    ebpf_section,
    gpu_section,
    host_section,
    interface_rates,
    psi_section,
)

_OPEN = ord("{")
_GOOD = ("ok", "fallback")
_ORDER = ("host", "psi", "disk", "network", "sockets", "processes", "cgroup", "ebpf", "gpu")


class _Obj(Struct, omit_defaults=True):
    """A JSON object read for a few fields; to_builtins gives back only those present (a
    null and a missing field read the same through .get, which is all the sections use)."""


# --- host, PSI, eBPF: decoded narrow, then the shared section functions -------------------------


class _Util(_Obj):
    idle: Any = None
    iowait: Any = None
    steal: Any = None


class _HostCpu(_Obj):
    util_pct: _Util | None = None
    procs_running: Any = None
    procs_blocked: Any = None
    forks_per_s: Any = None


class _HostMemory(_Obj):
    MemTotal: Any = None
    MemAvailable: Any = None


class _VmstatRates(_Obj):
    pswpin_per_s: Any = None
    pswpout_per_s: Any = None
    pgmajfault_per_s: Any = None


class _Vmstat(_Obj):
    oom_kill: Any = None


class _Host(_Obj):
    cpu: _HostCpu | None = None
    load: Any = None
    memory: _HostMemory | None = None
    vmstat_rates: _VmstatRates | None = None
    vmstat: _Vmstat | None = None


class _Avg(_Obj):
    avg10: Any = None


class _PsiResource(_Obj):
    some: _Avg | None = None
    full: _Avg | None = None


class _Psi(_Obj):
    cpu: _PsiResource | None = None
    memory: _PsiResource | None = None
    io: _PsiResource | None = None


class _Ebpf(_Obj):
    counts: Any = None


# --- the sources with row tables: the fields read (pass A), the rows raw (pass B) -------------


class _DiskHead(Struct):
    util_pct: Any = None
    read_await_ms: Any = None
    write_await_ms: Any = None


class _DiskA(Struct):
    devices: list[_DiskHead] = []


class _DiskB(Struct):
    devices: list[Raw] = []


class _Interface(Struct):
    name: Any = None
    operstate: Any = None
    rates: Any = None


class _Network(Struct):
    interfaces: list[_Interface] = []


class _Sockets(Struct):
    in_rto_backoff: Any = None
    listeners_near_backlog: list[Raw] | None = None
    top_retrans: list[Raw] | None = None


class _FdHead(Struct):
    num_fds: Any = None
    fd_pct: Any = None


class _Totals(Struct):
    processes: Any = None


class _Any(Struct):
    """An object, any fields (the row is only kept)."""


class _ProcessesA(Struct):
    rows: list[_FdHead] = []
    fd_holders: list[_FdHead] | None = None
    io_top: list[_Any] | None = None
    totals: _Totals | None = None


class _ProcessesB(Struct):
    rows: list[Raw] = []
    fd_holders: list[Raw] | None = None
    io_top: list[Raw] | None = None


class _CgroupCpu(Struct):
    throttled_periods_pct: Any = None


class _CgroupRow(Struct):
    cpu: _CgroupCpu | None = None


class _CgroupA(Struct):
    cgroups: list[_CgroupRow] = []


class _CgroupB(Struct):
    cgroups: list[Raw] = []


def _decoder(t: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(t)


_HOST, _PSI, _EBPF = _decoder(_Host), _decoder(_Psi), _decoder(_Ebpf)
_DISK_A, _DISK_B, _NETWORK, _SOCKETS = (
    _decoder(_DiskA),
    _decoder(_DiskB),
    _decoder(_Network),
    _decoder(_Sockets),
)
_PROCS_A, _PROCS_B = _decoder(_ProcessesA), _decoder(_ProcessesB)
_CGROUP_A, _CGROUP_B = _decoder(_CgroupA), _decoder(_CgroupB)
_DICT = _decoder(dict[str, Any])


def _rows(raws: Sequence[Raw]) -> Raw:
    """The JSON array of the first MAX_ROWS raw rows: what ``extract``'s table encodes to."""
    return Raw(b"[" + b",".join(raws[:MAX_ROWS]) + b"]")


def _plain(obj: _Obj) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(obj)
    return out


def _disk(data: Raw, values: Values, tables: Tables) -> None:
    heads = _DISK_A.decode(data).devices
    utils = [u for d in heads if (u := _num(d.util_pct)) is not None]
    if utils:
        _add(values, "disk_util_max_pct", max(utils))
    awaits = [a for d in heads for x in (d.read_await_ms, d.write_await_ms) if (a := _num(x)) is not None]
    if awaits:
        _add(values, "disk_await_max_ms", max(awaits))
    raws = _DISK_B.decode(data).devices
    order = sorted(range(len(heads)), key=lambda i: -(_num(heads[i].util_pct) or 0))
    tables["disks"] = _rows([raws[i] for i in order])


def _network(data: Raw, values: Values, tables: Tables) -> None:
    ifaces = [
        {"name": f.name, "operstate": f.operstate, "rates": f.rates} for f in _NETWORK.decode(data).interfaces
    ]
    interface_rates(ifaces, values)
    tables["interfaces"] = ifaces[:MAX_ROWS]


def _sockets(data: Raw, values: Values, tables: Tables) -> None:
    s = _SOCKETS.decode(data)
    _add(values, "tcp_in_rto_backoff", _num(s.in_rto_backoff))
    near = s.listeners_near_backlog or []
    _add(values, "listeners_near_backlog", float(len(near)))
    tables["listeners_near_backlog"] = _rows(near)
    tables["top_retrans"] = _rows(s.top_retrans or [])


def _processes(data: Raw, values: Values, tables: Tables) -> None:
    a = _PROCS_A.decode(data)
    holders = a.fd_holders or []
    fds = [f for r in a.rows + holders if (f := _num(r.num_fds)) is not None]
    if fds:
        _add(values, "max_process_fds", max(fds))
    pcts = [p for h in holders if (p := _num(h.fd_pct)) is not None]
    if pcts:
        _add(values, "max_process_fd_pct", max(pcts))
    b = _PROCS_B.decode(data)
    tables["processes"] = _rows(b.rows)
    tables["fd_holders"] = _rows(b.fd_holders or [])
    tables["io_top"] = _rows(b.io_top or [])
    _add(values, "processes", _num(a.totals.processes if a.totals is not None else None))


def _cgroup(data: Raw, values: Values, tables: Tables) -> None:
    rows = _CGROUP_A.decode(data).cgroups
    throttled = [t for r in rows if (t := _num(r.cpu.throttled_periods_pct if r.cpu else None)) is not None]
    if throttled:
        _add(values, "cgroup_throttled_max_pct", max(throttled))
    tables["cgroups"] = _rows(_CGROUP_B.decode(data).cgroups)


def extract_raw(snap: SnapshotEnvelope) -> Extract | None:
    """The snapshot's extract, its tables as raw JSON; None where the data is not of the
    shapes read here (the caller takes the full path)."""
    values: Values = {}
    tables: Tables = {}
    xids: list[Any] = []
    ooms: float | None = None
    src = snap.sources
    try:
        # extract's order of sources, which is the order its values and tables take.
        for name in _ORDER:
            entry = src.get(name)
            if entry is None or entry.status not in _GOOD:
                continue
            data = entry.data
            if name == "host":
                ooms = host_section(_plain(_HOST.decode(data)), values)
            elif name == "psi":
                psi_section(_plain(_PSI.decode(data)), values)
            elif name == "disk":
                _disk(data, values, tables)
            elif name == "network":
                _network(data, values, tables)
            elif name == "sockets":
                _sockets(data, values, tables)
            elif name == "processes":
                _processes(data, values, tables)
            elif name == "cgroup":
                _cgroup(data, values, tables)
            elif name == "ebpf":
                ebpf_section(_plain(_EBPF.decode(data)), values)
            else:
                xids = gpu_section(_DICT.decode(data), values, tables)
    except (msgspec.ValidationError, msgspec.DecodeError, TypeError, AttributeError, ValueError, KeyError):
        return None
    return Extract(snap.ts, values, ooms, tables, xids, list(src))
