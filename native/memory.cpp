#include "common.hpp"
#include "readers.hpp"

namespace probe {

Counters parse_meminfo(std::string_view text) {
  // "MemTotal:       24576000 kB"; HugePages_* lines carry counts, no unit.
  Counters out;
  LineReader lines(text);
  std::string_view line;
  while (lines.next(line)) {
    if (trim(line).empty()) continue;
    auto colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) parse_fail("/proc/meminfo line", line);
    auto f = split_ws(line.substr(colon + 1));
    std::uint64_t v = 0;
    if (f.empty() || f.size() > 2 || !parse_u64(f[0], v)) parse_fail("/proc/meminfo line", line);
    if (f.size() == 2) {
      if (f[1] != "kB") parse_fail("/proc/meminfo unit", line);
      if (v > (UINT64_MAX >> 10)) parse_fail("/proc/meminfo value", line);
      v <<= 10;
    }
    out.emplace_back(std::string(line.substr(0, colon)), v);
  }
  if (out.empty()) throw ParseError("/proc/meminfo is empty");
  return out;
}

Counters parse_vmstat(std::string_view text) {
  Counters out;
  LineReader lines(text);
  std::string_view line;
  while (lines.next(line)) {
    if (trim(line).empty()) continue;
    auto f = split_ws(line);
    std::uint64_t v = 0;
    // The kernel clamps per-CPU drift before printing, so a negative value is garbage.
    if (f.size() != 2 || !parse_u64(f[1], v)) parse_fail("/proc/vmstat line", line);
    out.emplace_back(std::string(f[0]), v);
  }
  if (out.empty()) throw ParseError("/proc/vmstat is empty");
  return out;
}

Counters read_meminfo(const std::string& root) { return parse_meminfo(read_file(join_root(root, "/proc/meminfo"))); }
Counters read_vmstat(const std::string& root) { return parse_vmstat(read_file(join_root(root, "/proc/vmstat"))); }

}  // namespace probe
