#include <dirent.h>

#include <algorithm>
#include <cerrno>

#include "common.hpp"
#include "readers.hpp"

namespace probe {

namespace {

void fill_counters(DiskStat& d, const std::vector<std::string_view>& f, std::size_t first,
                   std::string_view line) {
  std::size_t n = f.size() - first;
  // 11 fields before Linux 4.18, 15 (discards) before 5.5, 17 (flushes) since.
  if (n != 11 && n != 15 && n != 17) parse_fail("disk stat line", line);
  for (std::size_t i = 0; i < n; ++i)
    if (!parse_u64(f[first + i], d.v[i])) parse_fail("disk stat line", line);
  d.fields = static_cast<int>(n);
}

void read_queue_attrs(const std::string& root, DiskStat& d) {
  std::string base = join_root(root, "/sys/block/" + d.name + "/queue/");
  std::string text;
  int err = 0;
  std::uint64_t v = 0;
  if (try_read_file(base + "rotational", text, &err) && parse_u64(trim(text), v)) d.rotational = v != 0;
  if (try_read_file(base + "nr_requests", text, &err) && parse_u64(trim(text), v)) d.nr_requests = v;
  if (try_read_file(base + "scheduler", text, &err)) d.scheduler = parse_scheduler(text);
}

bool parse_dev(std::string_view text, std::uint32_t& major, std::uint32_t& minor) {
  text = trim(text);
  auto colon = text.find(':');
  std::uint64_t a = 0, b = 0;
  if (colon == std::string_view::npos || !parse_u64(text.substr(0, colon), a) ||
      !parse_u64(text.substr(colon + 1), b) || a > UINT32_MAX || b > UINT32_MAX)
    return false;
  major = static_cast<std::uint32_t>(a);
  minor = static_cast<std::uint32_t>(b);
  return true;
}

}  // namespace

DiskStat parse_block_stat(std::string_view text) {
  DiskStat d;
  fill_counters(d, split_ws(text), 0, text);
  return d;
}

std::vector<DiskStat> parse_diskstats(std::string_view text) {
  std::vector<DiskStat> out;
  LineReader lines(text);
  std::string_view line;
  while (lines.next(line)) {
    auto f = split_ws(line);
    if (f.empty()) continue;
    DiskStat d;
    std::uint64_t major = 0, minor = 0;
    if (f.size() < 3 || !parse_u64(f[0], major) || !parse_u64(f[1], minor) || major > UINT32_MAX ||
        minor > UINT32_MAX)
      parse_fail("/proc/diskstats line", line);
    d.major = static_cast<std::uint32_t>(major);
    d.minor = static_cast<std::uint32_t>(minor);
    d.name = std::string(f[2]);
    fill_counters(d, f, 3, line);
    out.push_back(std::move(d));
  }
  return out;
}

std::optional<std::string> parse_scheduler(std::string_view text) {
  // "mq-deadline kyber [bfq] none": the active one is bracketed.
  auto open = text.find('[');
  auto close = text.find(']', open == std::string_view::npos ? 0 : open);
  if (open == std::string_view::npos || close == std::string_view::npos) {
    auto t = trim(text);
    // Single-queue devices without a choice print just "none".
    if (!t.empty() && t.find(' ') == std::string_view::npos) return std::string(t);
    return std::nullopt;
  }
  return std::string(text.substr(open + 1, close - open - 1));
}

DiskStats read_diskstats(const std::string& root, bool queue_attrs) {
  DiskStats out;
  std::string block = join_root(root, "/sys/block");
  DIR* dir = ::opendir(block.c_str());
  if (dir != nullptr) {
    std::string text;
    int err = 0;
    while (dirent* e = ::readdir(dir)) {
      if (e->d_name[0] == '.') continue;
      std::string name = e->d_name;
      std::string base = block + "/" + name;
      if (!try_read_file(base + "/stat", text, &err)) continue;  // device went away
      DiskStat d = parse_block_stat(text);
      d.name = name;
      if (try_read_file(base + "/dev", text, &err)) parse_dev(text, d.major, d.minor);
      if (queue_attrs) read_queue_attrs(root, d);
      out.devices.push_back(std::move(d));
    }
    ::closedir(dir);
    if (!out.devices.empty()) {
      out.source = "sys";
    } else {
      out.reason = block + " lists no block devices";
    }
  } else {
    out.reason = block + ": " + errno_text(errno);
  }
  if (out.source.empty()) {
    // /proc/diskstats also lists partitions; sysfs may be absent in a chroot or container.
    out.source = "proc";
    out.devices = parse_diskstats(read_file(join_root(root, "/proc/diskstats")));
    if (queue_attrs)
      for (auto& d : out.devices) read_queue_attrs(root, d);
  }
  std::sort(out.devices.begin(), out.devices.end(),
            [](const DiskStat& a, const DiskStat& b) { return a.name < b.name; });
  return out;
}

}  // namespace probe
