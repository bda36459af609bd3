#include "perf.hpp"

#include <linux/perf_event.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common.hpp"
#include "readers.hpp"

namespace probe {

namespace {

constexpr std::uint64_t kConfigs[kPerfEventCount] = {
    PERF_COUNT_SW_CONTEXT_SWITCHES, PERF_COUNT_SW_CPU_MIGRATIONS, PERF_COUNT_SW_PAGE_FAULTS,
    PERF_COUNT_SW_PAGE_FAULTS_MAJ, PERF_COUNT_SW_TASK_CLOCK};

int perf_open(std::uint64_t config, int cpu) {
  perf_event_attr attr;
  std::memset(&attr, 0, sizeof attr);
  attr.size = sizeof attr;
  attr.type = PERF_TYPE_SOFTWARE;
  attr.config = config;
  attr.read_format = PERF_FORMAT_TOTAL_TIME_ENABLED | PERF_FORMAT_TOTAL_TIME_RUNNING;
  attr.disabled = 0;
  // pid = -1, cpu = N: every task on that CPU. Needs CAP_PERFMON (Linux 5.8+), CAP_SYS_ADMIN,
  // or kernel.perf_event_paranoid <= 0.
  return static_cast<int>(::syscall(SYS_perf_event_open, &attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC));
}

std::string paranoid_text(const std::string& root) {
  std::string text;
  int err = 0;
  if (try_read_file(join_root(root, "/proc/sys/kernel/perf_event_paranoid"), text, &err))
    return "kernel.perf_event_paranoid=" + std::string(trim(text));
  return "kernel.perf_event_paranoid unreadable (" + errno_text(err) + ")";
}

}  // namespace

PerfCounters::PerfCounters(const std::string& root) {
  std::vector<int> cpus;
  std::string text;
  int err = 0;
  if (try_read_file(join_root(root, "/sys/devices/system/cpu/online"), text, &err)) {
    cpus = parse_cpu_list(text);
  } else {
    for (const auto& c : read_cpu(root).per_cpu) cpus.push_back(c.cpu);
  }
  for (int cpu : cpus) {
    PerCpu g{cpu, {-1, -1, -1, -1, -1}};
    for (int i = 0; i < kPerfEventCount; ++i) {
      g.fds[i] = perf_open(kConfigs[i], cpu);
      if (g.fds[i] < 0) {
        int e = errno;
        for (int j = 0; j < i; ++j) ::close(g.fds[j]);
        close_all();
        reason_ = "perf_event_open(" + std::string(kPerfEvents[i]) + ", cpu " + std::to_string(cpu) +
                  "): " + errno_text(e) + " (errno " + std::to_string(e) + "); " + paranoid_text(root);
        if (e == EACCES || e == EPERM)
          reason_ += "; system-wide counters need CAP_PERFMON or CAP_SYS_ADMIN, or perf_event_paranoid <= 0";
        else if (e == ENOSYS || e == ENOENT)
          reason_ += "; this kernel lacks perf events (CONFIG_PERF_EVENTS) or is filtered by seccomp";
        return;
      }
    }
    cpus_.push_back(g);
  }
  if (cpus_.empty() && reason_.empty()) reason_ = "no online CPUs listed";
}

PerfCounters::~PerfCounters() { close_all(); }

void PerfCounters::close_all() {
  for (auto& g : cpus_)
    for (int fd : g.fds) ::close(fd);
  cpus_.clear();
}

std::vector<int> PerfCounters::cpus() const {
  std::vector<int> out;
  for (const auto& g : cpus_) out.push_back(g.cpu);
  return out;
}

std::vector<PerfCpuCounts> PerfCounters::read() const {
  if (cpus_.empty()) throw UnavailableError("perf counters unavailable: " + reason_);
  std::vector<PerfCpuCounts> out;
  out.reserve(cpus_.size());
  // Layout: value, time_enabled, time_running. Software events are never
  // multiplexed, so running == enabled and no scaling is needed.
  std::uint64_t buf[3];
  for (const auto& g : cpus_) {
    PerfCpuCounts c;
    c.cpu = g.cpu;
    for (int i = 0; i < kPerfEventCount; ++i) {
      ssize_t n = ::read(g.fds[i], buf, sizeof buf);
      if (n != static_cast<ssize_t>(sizeof buf))
        throw ReadError(n < 0 ? errno : EIO, std::string("perf event ") + kPerfEvents[i] + " of cpu " + std::to_string(g.cpu));
      c.values[i] = buf[0];
      if (i == 0) c.time_enabled_ns = buf[1], c.time_running_ns = buf[2];
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace probe
