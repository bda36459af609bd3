#include <unistd.h>

#include <cerrno>

#include "common.hpp"
#include "readers.hpp"

namespace probe {

namespace {

std::string first_line(const std::string& text) {
  return std::string(trim(std::string_view(text).substr(0, text.find('\n'))));
}

}  // namespace

LoadAvg parse_loadavg(std::string_view text) {
  // "0.20 0.18 0.12 1/80 11206"
  auto f = split_ws(text);
  LoadAvg out;
  if (f.size() < 5) parse_fail("loadavg", text);
  auto slash = f[3].find('/');
  if (!parse_double(f[0], out.load1) || !parse_double(f[1], out.load5) ||
      !parse_double(f[2], out.load15) || slash == std::string_view::npos ||
      !parse_u64(f[3].substr(0, slash), out.runnable) ||
      !parse_u64(f[3].substr(slash + 1), out.total) || !parse_u64(f[4], out.last_pid))
    parse_fail("loadavg", text);
  return out;
}

std::pair<double, double> parse_uptime(std::string_view text) {
  auto f = split_ws(text);
  double up = 0, idle = 0;
  if (f.size() < 2 || !parse_double(f[0], up) || !parse_double(f[1], idle)) parse_fail("uptime", text);
  return {up, idle};
}

std::vector<int> parse_cpu_list(std::string_view text) {
  // Kernel cpu lists: "0-3,8,10-11". NR_CPUS tops out at 8192 in distribution kernels,
  // so anything past 65536 is garbage (and would make us allocate without bound).
  text = trim(text);
  if (text.empty()) parse_fail("cpu list", text);
  std::vector<int> out;
  std::size_t pos = 0;
  for (;;) {
    std::size_t comma = text.find(',', pos);
    std::string_view part = text.substr(pos, comma == std::string_view::npos ? text.npos : comma - pos);
    std::uint64_t lo = 0, hi = 0;
    std::size_t dash = part.find('-');
    if (dash == std::string_view::npos) {
      if (!parse_u64(part, lo)) parse_fail("cpu list", text);
      hi = lo;
    } else if (!parse_u64(part.substr(0, dash), lo) || !parse_u64(part.substr(dash + 1), hi) || hi < lo) {
      parse_fail("cpu list", text);
    }
    if (hi >= 65536 || out.size() + (hi - lo + 1) > 65536) parse_fail("cpu list", text);
    for (std::uint64_t c = lo; c <= hi; ++c) out.push_back(static_cast<int>(c));
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return out;
}

HostInfo sysinfo_host(const std::string& root) {
  HostInfo h;
  h.hostname = first_line(read_file(join_root(root, "/proc/sys/kernel/hostname")));
  h.kernel_release = first_line(read_file(join_root(root, "/proc/sys/kernel/osrelease")));
  h.boot_id = first_line(read_file(join_root(root, "/proc/sys/kernel/random/boot_id")));
  std::string text;
  int err = 0;
  for (const char* p : {"/etc/machine-id", "/var/lib/dbus/machine-id"}) {
    if (try_read_file(join_root(root, p), text, &err) && !first_line(text).empty()) {
      h.machine_id = first_line(text);
      break;
    }
  }
  auto [up, idle] = parse_uptime(read_file(join_root(root, "/proc/uptime")));
  h.uptime_s = up;
  h.idle_s = idle;
  h.load = parse_loadavg(read_file(join_root(root, "/proc/loadavg")));
  if (try_read_file(join_root(root, "/sys/devices/system/cpu/online"), text, &err)) {
    h.cpu_count = static_cast<int>(parse_cpu_list(text).size());
  } else {
    // Without sysfs, count the per-CPU lines of /proc/stat.
    h.cpu_count = static_cast<int>(read_cpu(root).per_cpu.size());
  }
  h.page_size = ::sysconf(_SC_PAGESIZE);
  h.clock_ticks = ::sysconf(_SC_CLK_TCK);
  return h;
}

}  // namespace probe
