#include "common.hpp"
#include "readers.hpp"

namespace probe {

std::vector<NetDev> parse_net_dev(std::string_view text) {
  // Two header lines, then "  eth0: rx... tx..." (the name may touch the first number).
  std::vector<NetDev> out;
  LineReader lines(text);
  std::string_view line;
  while (lines.next(line)) {
    auto colon = line.find(':');
    if (colon == std::string_view::npos) {
      if (trim(line).empty() || line.find('|') != std::string_view::npos) continue;
      parse_fail("/proc/net/dev line", line);
    }
    auto name = trim(line.substr(0, colon));
    auto f = split_ws(line.substr(colon + 1));
    if (name.empty() || f.size() != kNetDevFieldCount) parse_fail("/proc/net/dev line", line);
    NetDev d;
    d.name = std::string(name);
    for (int i = 0; i < kNetDevFieldCount; ++i)
      if (!parse_u64(f[i], d.v[i])) parse_fail("/proc/net/dev line", line);
    out.push_back(std::move(d));
  }
  return out;
}

std::vector<NetDev> read_net_dev(const std::string& root) {
  return parse_net_dev(read_file(join_root(root, "/proc/net/dev")));
}

NetstatGroups parse_netstat(std::string_view text) {
  NetstatGroups out;
  LineReader lines(text);
  std::string_view header;
  while (lines.next(header)) {
    if (trim(header).empty()) continue;
    std::string_view values;
    if (!lines.next(values)) parse_fail("netstat header without values", header);
    auto hc = header.find(':');
    auto vc = values.find(':');
    if (hc == std::string_view::npos || vc == std::string_view::npos ||
        header.substr(0, hc) != values.substr(0, vc))
      parse_fail("netstat line pair", header);
    auto names = split_ws(header.substr(hc + 1));
    auto nums = split_ws(values.substr(vc + 1));
    if (names.size() != nums.size()) parse_fail("netstat line pair (column count differs)", header);
    std::vector<std::pair<std::string, std::int64_t>> group;
    group.reserve(names.size());
    for (std::size_t i = 0; i < names.size(); ++i) {
      std::int64_t v = 0;
      if (!parse_i64(nums[i], v)) {
        // Counters are unsigned longs in the kernel; values past INT64_MAX wrap.
        std::uint64_t u = 0;
        if (!parse_u64(nums[i], u)) parse_fail("netstat value", values);
        v = static_cast<std::int64_t>(u);
      }
      group.emplace_back(std::string(names[i]), v);
    }
    std::string gname(header.substr(0, hc));
    bool merged = false;
    for (auto& g : out)
      if (g.first == gname) {
        for (auto& kv : group) g.second.push_back(std::move(kv));
        merged = true;
        break;
      }
    if (!merged) out.emplace_back(std::move(gname), std::move(group));
  }
  return out;
}

NetstatGroups read_netstat(const std::string& root) {
  NetstatGroups out = parse_netstat(read_file(join_root(root, "/proc/net/snmp")));
  std::string text;
  int err = 0;
  // /proc/net/netstat (TcpExt, IpExt, MPTcpExt) exists on every kernel we target, but a
  // stripped container procfs may lack it: snmp alone still gives RetransSegs.
  if (try_read_file(join_root(root, "/proc/net/netstat"), text, &err))
    for (auto& g : parse_netstat(text)) out.push_back(std::move(g));
  return out;
}

}  // namespace probe
