"""Type stubs for probe_core, the C++ probe core (native/bindings.cpp).

tests/native/test_stub.py checks these against the built module: the same public
names, the same parameters and defaults, and the same keys in what each call returns.
"""

from collections.abc import Buffer
from typing import Any, Final, NotRequired, TypedDict

__version__: Final[str]

class ProbeError(Exception): ...
class ReadError(ProbeError, OSError): ...
class ParseError(ProbeError, ValueError): ...

class DecodeError(ProbeError, ValueError):
    offset: int
    reason: str

class EncodeError(ProbeError, ValueError): ...
class DecompressError(ProbeError, ValueError): ...
class OutputLimitError(DecompressError): ...
class UnavailableError(ProbeError): ...

class HostInfo(TypedDict):
    hostname: str
    kernel_release: str
    machine_id: str | None
    boot_id: str
    uptime_s: float
    idle_s: float
    load1: float
    load5: float
    load15: float
    runnable: int
    tasks: int
    last_pid: int
    cpu_count: int
    page_size: int
    clock_ticks: int

class CpuTimes(TypedDict):
    user: int
    nice: int
    system: int
    idle: int
    iowait: int
    irq: int
    softirq: int
    steal: int
    guest: int
    guest_nice: int

class PerCpuTimes(CpuTimes):
    cpu: int

class CpuStat(TypedDict):
    total: CpuTimes
    per_cpu: list[PerCpuTimes]
    columns: int
    ctxt: int
    intr: int
    processes: int
    procs_running: int
    procs_blocked: int
    btime: int

class PsiLine(TypedDict):
    avg10: float
    avg60: float
    avg300: float
    total_us: int

class PsiFile(TypedDict):
    some: PsiLine | None
    full: PsiLine | None

class Pressure(TypedDict):
    available: bool
    reason: str | None
    cpu: PsiFile | None
    memory: PsiFile | None
    io: PsiFile | None
    irq: NotRequired[PsiFile | None]  # Linux 6.1+ with CONFIG_IRQ_TIME_ACCOUNTING
    absent: dict[str, str]

class DiskStat(TypedDict):
    name: str
    major: int
    minor: int
    reads_completed: int
    reads_merged: int
    sectors_read: int
    read_time_ms: int
    writes_completed: int
    writes_merged: int
    sectors_written: int
    write_time_ms: int
    io_in_progress: int
    io_time_ms: int
    weighted_io_time_ms: int
    discards_completed: int | None
    discards_merged: int | None
    sectors_discarded: int | None
    discard_time_ms: int | None
    flushes_completed: int | None
    flush_time_ms: int | None
    rotational: bool | None
    nr_requests: int | None
    scheduler: str | None

class DiskStats(TypedDict):
    source: str
    reason: str | None
    devices: list[DiskStat]

class NetDev(TypedDict):
    interface: str
    rx_bytes: int
    rx_packets: int
    rx_errs: int
    rx_drop: int
    rx_fifo: int
    rx_frame: int
    rx_compressed: int
    rx_multicast: int
    tx_bytes: int
    tx_packets: int
    tx_errs: int
    tx_drop: int
    tx_fifo: int
    tx_colls: int
    tx_carrier: int
    tx_compressed: int

class PidStat(TypedDict):
    pid: int
    ppid: int
    comm: str
    state: str
    minflt: int
    majflt: int
    utime_ticks: int
    stime_ticks: int
    threads: int
    starttime_ticks: int
    rss_pages: int

class CgroupEntry(TypedDict):
    hierarchy: str
    controllers: str
    path: str

class PidCgroup(TypedDict):
    entries: list[CgroupEntry]
    primary: str

class ProcTotals(TypedDict):
    processes: int
    threads: int
    running: int
    sleeping: int
    blocked: int
    stopped: int
    zombies: int
    idle: int
    other: int

class ProcRow(TypedDict):
    pid: int
    ppid: int
    comm: str
    state: str
    uid: int | None
    cgroup: str | None
    utime_s: float
    stime_s: float
    rss_bytes: int
    threads: int
    majflt: int
    minflt: int
    start_time_ticks: int
    read_bytes: int | None
    write_bytes: int | None
    num_fds: int | None
    smaps: dict[str, int] | None
    cpu_percent: float | None
    majflt_per_s: float | None
    minflt_per_s: float | None
    read_bytes_per_s: float | None
    write_bytes_per_s: float | None
    rank: float

class FdHolder(TypedDict):
    pid: int
    comm: str
    num_fds: int
    fd_limit: int | None

class ScanResult(TypedDict):
    monotonic_s: float
    interval_s: float | None
    totals: ProcTotals
    vanished: int
    rows: list[ProcRow]

class PerfCpuCounts(TypedDict):
    cpu: int
    task_clock_ns: int
    context_switches: int
    cpu_migrations: int
    page_faults: int
    major_faults: int
    time_enabled_ns: int
    time_running_ns: int

class PerfTotals(TypedDict):
    task_clock_ns: int
    context_switches: int
    cpu_migrations: int
    page_faults: int
    major_faults: int

class PerfReading(TypedDict):
    per_cpu: list[PerfCpuCounts]
    total: PerfTotals

class TcpSocket(TypedDict):
    family: str
    state: str
    saddr: str
    sport: int
    daddr: str
    dport: int
    rqueue: int
    wqueue: int | None
    backlog: int | None
    uid: int
    inode: int
    retransmits: int
    total_retrans: int | None
    rtt_us: int | None
    lost: int | None

class TcpSummary(TypedDict):
    source: str
    total: int
    states: dict[str, int]
    listen_sockets: int
    in_rto_backoff: int
    rqueue_bytes: int
    wqueue_bytes: int
    listeners_near_backlog: list[TcpSocket]
    top_rqueue: list[TcpSocket]
    top_wqueue: list[TcpSocket]
    top_retrans: list[TcpSocket]
    malformed: int

class TaskDelays(TypedDict):
    pid: int
    version: int
    cpu_count: int
    cpu_delay_ns: int
    blkio_count: int
    blkio_delay_ns: int
    swapin_count: int
    swapin_delay_ns: int
    freepages_count: int
    freepages_delay_ns: int
    thrashing_count: int | None
    thrashing_delay_ns: int | None
    compact_count: int | None
    compact_delay_ns: int | None
    cpu_run_real_ns: int
    cpu_run_virtual_ns: int
    voluntary_switches: int
    involuntary_switches: int

class CapSets(TypedDict):
    effective: int
    permitted: int
    inheritable: int

class JsonCheck(TypedDict):
    ok: bool
    nodes: int
    depth: int
    error: str | None
    path: str | None
    offset: int | None

# Event dicts differ by "type"; see docs/event-format.md for the fields of each.
Event = dict[str, Any]

def sysinfo_host(root: str = "/") -> HostInfo: ...
def read_cpu(root: str = "/") -> CpuStat: ...
def parse_proc_stat(text: str) -> CpuStat: ...
def read_meminfo(root: str = "/") -> dict[str, int]: ...
def parse_meminfo(text: str) -> dict[str, int]: ...
def read_vmstat(root: str = "/") -> dict[str, int]: ...
def parse_vmstat(text: str) -> dict[str, int]: ...
def read_pressure(root: str = "/") -> Pressure: ...
def parse_pressure(text: str) -> PsiFile: ...
def read_diskstats(root: str = "/", queue_attrs: bool = True) -> DiskStats: ...
def parse_diskstats(text: str) -> list[DiskStat]: ...
def read_net_dev(root: str = "/") -> list[NetDev]: ...
def parse_net_dev(text: str) -> list[NetDev]: ...
def read_netstat(root: str = "/") -> dict[str, dict[str, int]]: ...
def parse_netstat(text: str) -> dict[str, dict[str, int]]: ...
def parse_pid_stat(text: str) -> PidStat: ...
def parse_pid_cgroup(text: str) -> PidCgroup: ...
def parse_smaps_rollup(text: str) -> dict[str, int]: ...
def parse_nofile_limit(text: str) -> int | None: ...

class ProcessScanner:
    def __init__(self, root: str = "/", cold_ttl_s: float = 10.0, keep_fds: int = 0) -> None: ...
    @property
    def root(self) -> str: ...
    @property
    def cold_ttl_s(self) -> float: ...
    @property
    def open_fds(self) -> int: ...
    def scan(self, key: str = "cpu", top_n: int = 20, enrich: bool = True) -> ScanResult: ...
    def fd_holders(self, top_n: int = 5) -> list[FdHolder]: ...

class PerfCounters:
    def __init__(self, root: str = "/") -> None: ...
    def available(self) -> bool: ...
    def reason(self) -> str: ...
    def cpus(self) -> list[int]: ...
    def read(self) -> PerfReading: ...

PERF_EVENTS: Final[tuple[str, ...]]

class BpfMapInfo(TypedDict):
    type: int
    key_size: int
    value_size: int
    max_entries: int
    name: str

class PerfRingDrain(TypedDict):
    samples: list[bytes]
    lost: int
    corrupt: int
    tail: int

def bpf_map_info(fd: int) -> BpfMapInfo: ...
def bpf_map_items(fd: int) -> list[tuple[bytes, bytes]]: ...
def parse_perf_ring(ring: bytes, tail: int, head: int, max_samples: int = 1048576) -> PerfRingDrain: ...

class BpfPerfBuffer:
    def __init__(self, map_fd: int, cpus: list[int], page_cnt: int) -> None: ...
    def poll(self, max_samples: int = 1048576) -> list[tuple[int, bytes]]: ...
    def lost(self) -> int: ...
    def corrupt(self) -> int: ...
    def close(self) -> None: ...

def sock_diag_tcp(top_n: int = 10, backlog_ratio: float = 0.8, per_family: bool = False) -> TcpSummary: ...
def read_proc_net_tcp(root: str = "/", top_n: int = 10, backlog_ratio: float = 0.8) -> TcpSummary: ...
def parse_proc_net_tcp(
    text: str, family: int = 4, top_n: int = 10, backlog_ratio: float = 0.8
) -> TcpSummary: ...

class Taskstats:
    def __init__(self) -> None: ...
    @property
    def family_id(self) -> int: ...
    def tgid(self, tgid: int) -> TaskDelays | None: ...

def capget() -> CapSets: ...
def crc32c(data: bytes, value: int = 0) -> int: ...
def crc32c_hardware() -> bool: ...
def median_mad(values: Buffer) -> tuple[float, float, int] | None: ...
def _crc32c_software(data: bytes, value: int = 0) -> int: ...  # the table path, for tests
def gzip_compress(data: bytes, level: int = 6) -> bytes: ...
def gzip_decompress(data: bytes, max_output: int) -> bytes: ...
def json_check(data: bytes, max_depth: int, max_nodes: int) -> JsonCheck: ...
def encode_events(events: list[Event]) -> bytes: ...
def decode_events(data: bytes) -> list[Event]: ...

EVENT_FORMAT_VERSION: Final[int]
EVENT_HEADER_SIZE: Final[int]
EVENT_MAX_RECORD: Final[int]
EVENT_TYPES: Final[tuple[str, ...]]
