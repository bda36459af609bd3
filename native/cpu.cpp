#include "common.hpp"
#include "readers.hpp"

namespace probe {

namespace {

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

CpuTimes parse_cpu_line(std::string_view line, int* columns) {
  auto f = split_ws(line);
  CpuTimes t;
  // At least user, nice, system, idle; Linux 2.6.33+ prints all ten.
  if (f.size() < 5 || f.size() > 1 + kCpuFieldCount) parse_fail("/proc/stat cpu line", line);
  if (f[0].size() > 3) {
    std::uint64_t n = 0;
    if (!parse_u64(f[0].substr(3), n) || n > 65535) parse_fail("/proc/stat cpu line", line);
    t.cpu = static_cast<int>(n);
  }
  for (std::size_t i = 1; i < f.size(); ++i)
    if (!parse_u64(f[i], t.v[i - 1])) parse_fail("/proc/stat cpu line", line);
  *columns = static_cast<int>(f.size() - 1);
  return t;
}

std::uint64_t parse_scalar(std::string_view line) {
  auto f = split_ws(line);
  std::uint64_t v = 0;
  if (f.size() < 2 || !parse_u64(f[1], v)) parse_fail("/proc/stat line", line);
  return v;
}

}  // namespace

CpuStat parse_proc_stat(std::string_view text) {
  CpuStat s;
  LineReader lines(text);
  std::string_view line;
  unsigned seen = 0;
  enum : unsigned { kTotal = 1, kCtxt = 2, kBtime = 4, kProcs = 8, kRunning = 16, kBlocked = 32 };
  while (lines.next(line)) {
    if (starts_with(line, "cpu")) {
      int cols = 0;
      CpuTimes t = parse_cpu_line(line, &cols);
      if (t.cpu < 0) {
        s.total = t;
        s.columns = cols;
        seen |= kTotal;
      } else {
        s.per_cpu.push_back(t);
      }
    } else if (starts_with(line, "ctxt ")) {
      s.ctxt = parse_scalar(line);
      seen |= kCtxt;
    } else if (starts_with(line, "intr ")) {
      s.intr = parse_scalar(line);  // the first number is the total
    } else if (starts_with(line, "btime ")) {
      s.btime = parse_scalar(line);
      seen |= kBtime;
    } else if (starts_with(line, "processes ")) {
      s.processes = parse_scalar(line);
      seen |= kProcs;
    } else if (starts_with(line, "procs_running ")) {
      s.procs_running = parse_scalar(line);
      seen |= kRunning;
    } else if (starts_with(line, "procs_blocked ")) {
      s.procs_blocked = parse_scalar(line);
      seen |= kBlocked;
    }
  }
  static constexpr std::pair<unsigned, const char*> required[] = {
      {kTotal, "cpu"}, {kCtxt, "ctxt"}, {kBtime, "btime"},
      {kProcs, "processes"}, {kRunning, "procs_running"}, {kBlocked, "procs_blocked"}};
  for (auto [bit, name] : required)
    if (!(seen & bit)) throw ParseError(std::string("/proc/stat lacks the '") + name + "' line");
  return s;
}

CpuStat read_cpu(const std::string& root) { return parse_proc_stat(read_file(join_root(root, "/proc/stat"))); }

}  // namespace probe
