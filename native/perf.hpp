// System-wide per-CPU software counters through perf_event_open. Each counter is
// its own event (not a group): grouped software events read zero for members
// behind a clock leader and for task-clock behind a counting leader (seen on
// Linux 6.18), so read() makes one pass over every fd instead.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace probe {

inline constexpr int kPerfEventCount = 5;
// System-wide, task-clock advances with wall time on every CPU, as in `perf stat -a`.
inline constexpr const char* kPerfEvents[kPerfEventCount] = {
    "context_switches", "cpu_migrations", "page_faults", "major_faults", "task_clock_ns"};

struct PerfCpuCounts {
  int cpu = 0;
  std::uint64_t values[kPerfEventCount] = {};
  std::uint64_t time_enabled_ns = 0, time_running_ns = 0;
};

class PerfCounters {
 public:
  // root locates /sys/devices/system/cpu/online and perf_event_paranoid (for the reason).
  explicit PerfCounters(const std::string& root = "/");
  ~PerfCounters();
  PerfCounters(const PerfCounters&) = delete;
  PerfCounters& operator=(const PerfCounters&) = delete;

  bool available() const { return !cpus_.empty(); }
  const std::string& reason() const { return reason_; }
  std::vector<int> cpus() const;
  // Cumulative counts since open; throws UnavailableError when not available.
  std::vector<PerfCpuCounts> read() const;

 private:
  struct PerCpu {
    int cpu;
    int fds[kPerfEventCount];
  };
  void close_all();

  std::vector<PerCpu> cpus_;
  std::string reason_;
};

}  // namespace probe
