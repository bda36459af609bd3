// Host readers: pure parse_* functions over text, and thin read_* functions
// that read files under a root ("/" on a host, a fixture tree in tests).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace probe {

// --- sysinfo (sysinfo.cpp) -----------------------------------------------------
struct LoadAvg {
  double load1 = 0, load5 = 0, load15 = 0;
  std::uint64_t runnable = 0, total = 0, last_pid = 0;
};

struct HostInfo {
  std::string hostname;
  std::string kernel_release;
  std::optional<std::string> machine_id;  // absent in minimal containers
  std::string boot_id;
  double uptime_s = 0;
  double idle_s = 0;
  LoadAvg load;
  int cpu_count = 0;
  long page_size = 0;
  long clock_ticks = 0;
};

LoadAvg parse_loadavg(std::string_view text);
std::pair<double, double> parse_uptime(std::string_view text);
std::vector<int> parse_cpu_list(std::string_view text);  // "0-2,8" -> {0, 1, 2, 8}
HostInfo sysinfo_host(const std::string& root);

// --- /proc/stat (cpu.cpp) ------------------------------------------------------
inline constexpr int kCpuFieldCount = 10;
inline constexpr const char* kCpuFields[kCpuFieldCount] = {
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guest_nice"};

struct CpuTimes {
  int cpu = -1;  // -1 is the aggregate line
  std::uint64_t v[kCpuFieldCount] = {};
};

struct CpuStat {
  CpuTimes total;
  std::vector<CpuTimes> per_cpu;
  int columns = 0;  // time columns the kernel printed (10 since Linux 2.6.33)
  std::uint64_t ctxt = 0, intr = 0, processes = 0, procs_running = 0, procs_blocked = 0,
                btime = 0;
};

CpuStat parse_proc_stat(std::string_view text);
CpuStat read_cpu(const std::string& root);

// --- memory (memory.cpp) -------------------------------------------------------
using Counters = std::vector<std::pair<std::string, std::uint64_t>>;

Counters parse_meminfo(std::string_view text);  // kB values converted to bytes
Counters parse_vmstat(std::string_view text);
Counters read_meminfo(const std::string& root);
Counters read_vmstat(const std::string& root);

// --- PSI (pressure.cpp) --------------------------------------------------------
struct PsiLine {
  double avg10 = 0, avg60 = 0, avg300 = 0;
  std::uint64_t total_us = 0;
};

struct PsiFile {
  std::optional<PsiLine> some;
  std::optional<PsiLine> full;  // cpu "full" only since Linux 5.13
};

struct PsiResource {
  std::string name;
  std::optional<PsiFile> value;  // nullopt: absent on this kernel
  std::string reason;            // why absent
};

struct Pressure {
  bool available = false;
  std::string reason;
  std::vector<PsiResource> resources;  // cpu, memory, io, then irq when present
};

PsiFile parse_pressure(std::string_view text);
Pressure read_pressure(const std::string& root);

// --- disks (disk.cpp) ----------------------------------------------------------
inline constexpr int kDiskFieldCount = 17;
inline constexpr const char* kDiskFields[kDiskFieldCount] = {
    "reads_completed", "reads_merged", "sectors_read", "read_time_ms",
    "writes_completed", "writes_merged", "sectors_written", "write_time_ms",
    "io_in_progress", "io_time_ms", "weighted_io_time_ms",
    "discards_completed", "discards_merged", "sectors_discarded", "discard_time_ms",
    "flushes_completed", "flush_time_ms"};

struct DiskStat {
  std::string name;
  std::uint32_t major = 0, minor = 0;
  std::uint64_t v[kDiskFieldCount] = {};
  int fields = 0;  // 11 before Linux 4.18, 15 before 5.5, 17 since
  std::optional<int> rotational;
  std::optional<std::uint64_t> nr_requests;
  std::optional<std::string> scheduler;  // the active one, without brackets
};

struct DiskStats {
  std::string source;  // "sys" (/sys/block/*/stat) or "proc" (/proc/diskstats)
  std::string reason;  // why the fallback was used
  std::vector<DiskStat> devices;
};

// One /sys/block/X/stat line (no device columns).
DiskStat parse_block_stat(std::string_view text);
std::vector<DiskStat> parse_diskstats(std::string_view text);
std::optional<std::string> parse_scheduler(std::string_view text);
// queue_attrs=false skips rotational, nr_requests and scheduler: configuration that
// changes rarely, three reads per device that a per-second caller can leave to a
// slower refresh.
DiskStats read_diskstats(const std::string& root, bool queue_attrs = true);

// --- network (net.cpp) ---------------------------------------------------------
inline constexpr int kNetDevFieldCount = 16;
inline constexpr const char* kNetDevFields[kNetDevFieldCount] = {
    "rx_bytes", "rx_packets", "rx_errs", "rx_drop", "rx_fifo", "rx_frame", "rx_compressed",
    "rx_multicast", "tx_bytes", "tx_packets", "tx_errs", "tx_drop", "tx_fifo", "tx_colls",
    "tx_carrier", "tx_compressed"};

struct NetDev {
  std::string name;
  std::uint64_t v[kNetDevFieldCount] = {};
};

// Group ("Tcp", "TcpExt", ...) -> counter -> value. Signed: Tcp MaxConn is -1.
using NetstatGroups =
    std::vector<std::pair<std::string, std::vector<std::pair<std::string, std::int64_t>>>>;

std::vector<NetDev> parse_net_dev(std::string_view text);
std::vector<NetDev> read_net_dev(const std::string& root);
// Parses the paired header/value line format of /proc/net/snmp and /proc/net/netstat.
NetstatGroups parse_netstat(std::string_view text);
NetstatGroups read_netstat(const std::string& root);

}  // namespace probe
