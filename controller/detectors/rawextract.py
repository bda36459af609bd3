"""A snapshot's extract straight from the wire's raw JSON: what hot state takes per sample.

``extract`` (controller/detectors/evidence.py) reads a snapshot whose sources' data
were decoded into dicts: every process, cgroup and interface row built as Python
objects, and each table built and encoded again to be kept. Here each source's data
is decoded with msgspec structs that name only the fields its signal values need
(everything else is skipped at C speed), and the data of the sources with tables is
kept as it came: their tables are made from it by the same functions when a detector
or a run's evidence reads them (``source_tables``), which for most samples is never.
The small sources (host, PSI, eBPF counters, GPUs) go through the per-source functions
``extract`` uses.

The structs also hold the shapes the table functions need (lists of objects where
they iterate rows, lists where they slice), so a table made later cannot fail on data
taken here. Where the data is not of these shapes (a row that is not an object, a
field of another type), ``extract_raw`` answers None and hot state takes the full
path, which gives that data's extract or its error exactly as before. Equal where it
answers: tests/controller/test_rawextract.py.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Raw, Struct

from collector.wire import SnapshotEnvelope
from controller.detectors.evidence import (
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


# --- the sources with tables: only the fields their values read (the data stays raw) ----------


class _DiskHead(Struct):
    util_pct: Any = None
    read_await_ms: Any = None
    write_await_ms: Any = None


class _Disk(Struct):
    devices: list[_DiskHead] = []


class _Interface(Struct):
    name: Any = None
    operstate: Any = None
    rates: Any = None


class _Network(Struct):
    interfaces: list[_Interface] = []


class _Sockets(Struct):
    in_rto_backoff: Any = None
    # Lists (or none), as the tables' slices need: anything else takes the full path.
    listeners_near_backlog: list[Raw] | None = None
    top_retrans: list[Raw] | None = None


class _FdHead(Struct):
    num_fds: Any = None
    fd_pct: Any = None


class _Totals(Struct):
    processes: Any = None


class _Any(Struct):
    """An object, any fields (the row is only kept)."""


class _Processes(Struct):
    rows: list[_FdHead] = []
    fd_holders: list[_FdHead] | None = None
    io_top: list[_Any] | None = None
    totals: _Totals | None = None


class _CgroupCpu(Struct):
    throttled_periods_pct: Any = None


class _CgroupRow(Struct):
    cpu: _CgroupCpu | None = None


class _Cgroup(Struct):
    cgroups: list[_CgroupRow] = []


def _decoder(t: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(t)


_HOST, _PSI, _EBPF = _decoder(_Host), _decoder(_Psi), _decoder(_Ebpf)
_DISK, _NETWORK, _SOCKETS = _decoder(_Disk), _decoder(_Network), _decoder(_Sockets)
_PROCS, _CGROUP = _decoder(_Processes), _decoder(_Cgroup)
_DICT = _decoder(dict[str, Any])


def _plain(obj: _Obj) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(obj)
    return out


def _disk(data: Raw, values: Values) -> None:
    heads = _DISK.decode(data).devices
    utils = [u for d in heads if (u := _num(d.util_pct)) is not None]
    if utils:
        _add(values, "disk_util_max_pct", max(utils))
    awaits = [a for d in heads for x in (d.read_await_ms, d.write_await_ms) if (a := _num(x)) is not None]
    if awaits:
        _add(values, "disk_await_max_ms", max(awaits))


def _network(data: Raw, values: Values) -> None:
    # The same rates the table will show: what raises here would raise there.
    interface_rates([{"name": f.name, "rates": f.rates} for f in _NETWORK.decode(data).interfaces], values)


def _sockets(data: Raw, values: Values) -> None:
    s = _SOCKETS.decode(data)
    _add(values, "tcp_in_rto_backoff", _num(s.in_rto_backoff))
    _add(values, "listeners_near_backlog", float(len(s.listeners_near_backlog or [])))


def _processes(data: Raw, values: Values) -> None:
    a = _PROCS.decode(data)
    holders = a.fd_holders or []
    fds = [f for r in a.rows + holders if (f := _num(r.num_fds)) is not None]
    if fds:
        _add(values, "max_process_fds", max(fds))
    pcts = [p for h in holders if (p := _num(h.fd_pct)) is not None]
    if pcts:
        _add(values, "max_process_fd_pct", max(pcts))
    _add(values, "processes", _num(a.totals.processes if a.totals is not None else None))


def _cgroup(data: Raw, values: Values) -> None:
    rows = _CGROUP.decode(data).cgroups
    throttled = [t for r in rows if (t := _num(r.cpu.throttled_periods_pct if r.cpu else None)) is not None]
    if throttled:
        _add(values, "cgroup_throttled_max_pct", max(throttled))


def extract_raw(snap: SnapshotEnvelope) -> Extract | None:
    """The snapshot's extract, its tables as raw JSON; None where the data is not of the
    shapes read here (the caller takes the full path)."""
    values: Values = {}
    tables: Tables = {}
    raw: dict[str, bytes] = {}
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
            elif name in _TABLED:
                _TABLED[name](data, values)
                raw[name] = bytes(data)
            elif name == "ebpf":
                ebpf_section(_plain(_EBPF.decode(data)), values)
            else:
                xids = gpu_section(_DICT.decode(data), values, tables)
    except (msgspec.ValidationError, msgspec.DecodeError, TypeError, AttributeError, ValueError, KeyError):
        return None
    return Extract(snap.ts, values, ooms, tables, xids, list(src), raw)


# The sources whose tables are made when read: their values here, their data kept raw.
_TABLED = {
    "disk": _disk,
    "network": _network,
    "sockets": _sockets,
    "processes": _processes,
    "cgroup": _cgroup,
}
