#include "process.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common.hpp"

namespace probe {

namespace {

double monotonic_now() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Formats "<pid>/<leaf>" into buf without snprintf (this runs once per pid per pass).
const char* pid_path(char* buf, int pid, const char* leaf) {
  char digits[16];
  int n = 0;
  unsigned v = static_cast<unsigned>(pid);
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0 && n < 15);
  char* p = buf;
  while (n > 0) *p++ = digits[--n];
  if (leaf != nullptr) {
    *p++ = '/';
    std::size_t len = std::strlen(leaf);
    std::memcpy(p, leaf, len);
    p += len;
  }
  *p = '\0';
  return buf;
}

}  // namespace

PidStat parse_pid_stat(std::string_view text) {
  // "pid (comm) S ppid ...": comm is up to 64 bytes of anything, so take the last ')'.
  PidStat s;
  auto open = text.find('(');
  auto close = text.rfind(')');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open)
    parse_fail("/proc/PID/stat", text);
  std::uint64_t pid = 0;
  if (!parse_u64(trim(text.substr(0, open)), pid) || pid > INT32_MAX) parse_fail("/proc/PID/stat", text);
  s.pid = static_cast<int>(pid);
  s.comm = std::string(text.substr(open + 1, close - open - 1));
  // Fields after ')' are numbered from 3 (state) as in proc(5).
  std::string_view rest = text.substr(close + 1);
  std::string_view f[22];  // fields 3..24
  int n = 0;
  std::size_t i = 0;
  while (n < 22 && i < rest.size()) {
    while (i < rest.size() && (rest[i] == ' ' || rest[i] == '\n')) ++i;
    std::size_t j = i;
    while (j < rest.size() && rest[j] != ' ' && rest[j] != '\n') ++j;
    if (j > i) f[n++] = rest.substr(i, j - i);
    i = j;
  }
  if (n < 22 || f[0].size() != 1) parse_fail("/proc/PID/stat", text);
  s.state = f[0][0];
  std::uint64_t ppid = 0;
  std::int64_t rss = 0;
  bool ok = parse_u64(f[1], ppid) && ppid <= INT32_MAX && parse_u64(f[7], s.minflt) &&
            parse_u64(f[9], s.majflt) && parse_u64(f[11], s.utime) && parse_u64(f[12], s.stime) &&
            parse_u64(f[17], s.threads) && parse_u64(f[19], s.starttime) && parse_i64(f[21], rss);
  if (!ok) parse_fail("/proc/PID/stat", text);
  s.ppid = static_cast<int>(ppid);
  s.rss_pages = rss > 0 ? static_cast<std::uint64_t>(rss) : 0;
  return s;
}

PidIo parse_pid_io(std::string_view text) {
  PidIo io;
  unsigned seen = 0;
  LineReader lines(text);
  std::string_view line;
  while (lines.next(line)) {
    auto colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    auto k = line.substr(0, colon);
    auto v = trim(line.substr(colon + 1));
    if (k == "read_bytes") {
      if (!parse_u64(v, io.read_bytes)) parse_fail("/proc/PID/io", line);
      seen |= 1;
    } else if (k == "write_bytes") {
      if (!parse_u64(v, io.write_bytes)) parse_fail("/proc/PID/io", line);
      seen |= 2;
    }
  }
  if (seen != 3) throw ParseError("/proc/PID/io lacks read_bytes or write_bytes");
  return io;
}

std::vector<CgroupEntry> parse_pid_cgroup(std::string_view text) {
  // "hierarchy-ID:controller-list:cgroup-path"; the path itself may contain ':'.
  std::vector<CgroupEntry> out;
  LineReader lines(text);
  std::string_view line;
  while (lines.next(line)) {
    if (line.empty()) continue;
    auto c1 = line.find(':');
    auto c2 = c1 == std::string_view::npos ? c1 : line.find(':', c1 + 1);
    if (c2 == std::string_view::npos) parse_fail("/proc/PID/cgroup", line);
    out.push_back({std::string(line.substr(0, c1)), std::string(line.substr(c1 + 1, c2 - c1 - 1)),
                   std::string(line.substr(c2 + 1))});
  }
  return out;
}

std::string primary_cgroup(const std::vector<CgroupEntry>& entries) {
  const CgroupEntry* v2 = nullptr;
  const CgroupEntry* cpu = nullptr;
  const CgroupEntry* memory = nullptr;
  bool has_v1 = false;
  for (const auto& e : entries) {
    if (e.hierarchy == "0" && e.controllers.empty()) {
      v2 = &e;
      continue;
    }
    has_v1 = true;
    std::string_view ctl(e.controllers);
    std::size_t pos = 0;
    while (pos <= ctl.size()) {
      auto comma = ctl.find(',', pos);
      auto name = ctl.substr(pos, comma == std::string_view::npos ? ctl.npos : comma - pos);
      if (name == "memory") memory = &e;
      if (name == "cpu") cpu = &e;
      if (comma == std::string_view::npos) break;
      pos = comma + 1;
    }
  }
  if (v2 != nullptr && !has_v1) return v2->path;
  if (memory != nullptr) return memory->path;
  if (cpu != nullptr) return cpu->path;
  if (v2 != nullptr) return v2->path;
  return entries.empty() ? std::string() : entries.front().path;
}

Counters parse_smaps_rollup(std::string_view text) {
  // First line is the "[rollup]" mapping header; the rest are "Key:   N kB".
  Counters out;
  LineReader lines(text);
  std::string_view line;
  while (lines.next(line)) {
    auto colon = line.find(':');
    if (colon == std::string_view::npos || line.find("[rollup]") != std::string_view::npos) continue;
    auto f = split_ws(line.substr(colon + 1));
    std::uint64_t v = 0;
    if (f.size() != 2 || f[1] != "kB" || !parse_u64(f[0], v) || v > (UINT64_MAX >> 10))
      parse_fail("/proc/PID/smaps_rollup", line);
    out.emplace_back(std::string(line.substr(0, colon)), v << 10);
  }
  return out;
}

std::optional<std::uint64_t> parse_nofile_limit(std::string_view text) {
  constexpr std::string_view label = "Max open files";
  std::size_t at = text.find(label);
  if (at == std::string_view::npos) throw ParseError("limits: no 'Max open files' line");
  std::string_view rest = text.substr(at + label.size());
  rest = rest.substr(0, rest.find('\n'));
  std::size_t b = rest.find_first_not_of(' ');
  if (b == std::string_view::npos) throw ParseError("limits: 'Max open files' has no value");
  rest = rest.substr(b);
  std::string_view soft = rest.substr(0, rest.find(' '));
  if (soft == "unlimited") return std::nullopt;
  std::uint64_t v = 0;
  if (!parse_u64(soft, v)) throw ParseError("limits: bad 'Max open files' value '" + std::string(soft) + "'");
  return v;
}

SortKey parse_sort_key(std::string_view key) {
  if (key == "cpu") return SortKey::cpu;
  if (key == "rss") return SortKey::rss;
  if (key == "io") return SortKey::io;
  if (key == "fds") return SortKey::fds;
  if (key == "majflt") return SortKey::majflt;
  throw Error("unknown sort key '" + std::string(key) + "' (expected cpu, rss, io, fds or majflt)");
}

ProcessScanner::ProcessScanner(std::string root, double cold_ttl_s, std::size_t keep_fds)
    : root_(std::move(root)),
      cold_ttl_s_(cold_ttl_s),
      keep_fds_(keep_fds),
      clk_tck_(::sysconf(_SC_CLK_TCK)),
      page_size_(::sysconf(_SC_PAGESIZE)) {
  if (!(cold_ttl_s >= 0)) throw Error("cold_ttl_s must be >= 0");
  std::string proc = join_root(root_, "/proc");
  proc_fd_ = ::open(proc.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (proc_fd_ < 0) throw ReadError(errno, proc);
  struct statfs fs {};
  procfs_ = ::fstatfs(proc_fd_, &fs) == 0 && fs.f_type == PROC_SUPER_MAGIC;
}

ProcessScanner::~ProcessScanner() {
  for (auto& [pid, fd] : stat_fds_) ::close(fd);
  if (proc_fd_ >= 0) ::close(proc_fd_);
}

long ProcessScanner::read_stat(int pid, char* buf, std::size_t cap, std::unordered_map<int, int>& keep) {
  char path[64];
  auto it = stat_fds_.find(pid);
  if (it != stat_fds_.end()) {
    int fd = it->second;
    stat_fds_.erase(it);
    // An fd pins its struct pid: once that process is gone reads fail (ESRCH), even if
    // a new process reuses the number, so a failed read means reopen, never stale data.
    ssize_t n = ::pread(fd, buf, cap, 0);
    if (n > 0) {
      keep.emplace(pid, fd);
      return static_cast<long>(n);
    }
    ::close(fd);
  }
  int fd = ::openat(proc_fd_, pid_path(path, pid, "stat"), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = ::pread(fd, buf, cap, 0);
  if (n > 0 && keep.size() < keep_fds_) {
    keep.emplace(pid, fd);
  } else {
    ::close(fd);
  }
  return n;
}

std::optional<PidIo> ProcessScanner::read_io(int pid) {
  char path[64];
  char buf[1024];
  long n = read_at(proc_fd_, pid_path(path, pid, "io"), buf, sizeof buf);
  // EACCES for other users' processes without CAP_SYS_PTRACE; ENOENT when gone.
  if (n <= 0) return std::nullopt;
  try {
    return parse_pid_io(std::string_view(buf, static_cast<std::size_t>(n)));
  } catch (const ParseError&) {
    return std::nullopt;
  }
}

std::optional<std::uint64_t> ProcessScanner::count_fds(int pid) {
  char path[64];
  pid_path(path, pid, "fd");
  if (procfs_) {
    // Linux 6.2+ reports the open fd count as the size of /proc/PID/fd: one stat
    // instead of listing hundreds of entries. Older kernels report 0: list them.
    struct stat st {};
    if (::fstatat(proc_fd_, path, &st, 0) == 0 && st.st_size > 0) return static_cast<std::uint64_t>(st.st_size);
  }
  int fd = ::openat(proc_fd_, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::uint64_t count = 0;
  alignas(8) char buf[8192];
  for (;;) {
    long n = ::syscall(SYS_getdents64, fd, buf, sizeof buf);
    if (n < 0) {
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    for (long off = 0; off < n;) {
      auto* d = reinterpret_cast<struct dirent64*>(buf + off);
      if (d->d_name[0] != '.') ++count;
      off += d->d_reclen;
    }
  }
  ::close(fd);
  return count;
}

ScanResult ProcessScanner::scan(SortKey key, std::size_t top_n, bool enrich) {
  std::lock_guard<std::mutex> lock(mu_);
  ScanResult res;
  res.monotonic_s = monotonic_now();
  double dt = prev_time_ >= 0 ? res.monotonic_s - prev_time_ : 0;
  if (dt > 0) res.interval_s = dt;

  // Boot-relative now, to rank by lifetime averages when there is no previous pass.
  double uptime = 0;
  {
    char buf[128];
    long n = read_at(proc_fd_, "uptime", buf, sizeof buf);
    if (n > 0) {
      try {
        uptime = parse_uptime(std::string_view(buf, static_cast<std::size_t>(n))).first;
      } catch (const ParseError&) {
        uptime = 0;
      }
    }
  }

  int dfd = ::openat(proc_fd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) throw ReadError(errno, join_root(root_, "/proc"));
  DIR* dir = ::fdopendir(dfd);
  if (dir == nullptr) {
    int err = errno;
    ::close(dfd);
    throw ReadError(err, join_root(root_, "/proc"));
  }

  std::vector<Entry> entries;
  entries.reserve(prev_.size() + 64);
  std::unordered_map<int, int> kept;
  kept.reserve(stat_fds_.size() + 64);
  std::unordered_map<int, Prev> next;
  next.reserve(prev_.size() + 64);
  const double tck = static_cast<double>(clk_tck_);
  char path[64];
  char buf[2048];
  while (dirent* e = ::readdir(dir)) {
    const char* name = e->d_name;
    if (name[0] < '1' || name[0] > '9') continue;
    std::uint64_t pid64 = 0;
    if (!parse_u64(name, pid64) || pid64 > INT32_MAX) continue;
    int pid = static_cast<int>(pid64);
    long n = read_stat(pid, buf, sizeof buf, kept);
    if (n <= 0) {
      ++res.vanished;  // exited between readdir and open, or a zombie reaped mid-read
      continue;
    }
    Entry en;
    try {
      en.stat = parse_pid_stat(std::string_view(buf, static_cast<std::size_t>(n)));
    } catch (const ParseError&) {
      ++res.vanished;
      continue;
    }
    auto& t = res.totals;
    ++t.processes;
    t.threads += en.stat.threads;
    switch (en.stat.state) {
      case 'R': ++t.running; break;
      case 'S': ++t.sleeping; break;
      case 'D': ++t.blocked; break;
      case 'T': case 't': ++t.stopped; break;
      case 'Z': ++t.zombies; break;
      case 'I': ++t.idle; break;
      default: ++t.other; break;
    }
    auto it = prev_.find(pid);
    en.prev = (it != prev_.end() && it->second.starttime == en.stat.starttime) ? &it->second : nullptr;
    if (key == SortKey::io) en.io = read_io(pid);
    if (key == SortKey::fds) en.fds = count_fds(pid);

    const std::uint64_t cpu_ticks = en.stat.utime + en.stat.stime;
    const double age = uptime - static_cast<double>(en.stat.starttime) / tck;
    switch (key) {
      case SortKey::cpu:
        if (en.prev && dt > 0) en.rank = static_cast<double>(cpu_ticks - std::min(cpu_ticks, en.prev->cpu_ticks)) / tck / dt * 100.0;
        else en.rank = age > 0 ? static_cast<double>(cpu_ticks) / tck / age * 100.0 : 0;
        break;
      case SortKey::rss: en.rank = static_cast<double>(en.stat.rss_pages); break;
      case SortKey::majflt:
        if (en.prev && dt > 0) en.rank = static_cast<double>(en.stat.majflt - std::min(en.stat.majflt, en.prev->majflt)) / dt;
        else en.rank = age > 0 ? static_cast<double>(en.stat.majflt) / age : 0;
        break;
      case SortKey::io:
        if (!en.io) en.rank = -1;
        else if (en.prev && en.prev->have_io && dt > 0)
          en.rank = static_cast<double>((en.io->read_bytes + en.io->write_bytes) -
                                        std::min(en.io->read_bytes + en.io->write_bytes,
                                                 en.prev->io.read_bytes + en.prev->io.write_bytes)) / dt;
        else en.rank = age > 0 ? static_cast<double>(en.io->read_bytes + en.io->write_bytes) / age : 0;
        break;
      case SortKey::fds: en.rank = en.fds ? static_cast<double>(*en.fds) : -1; break;
    }
    Prev p{en.stat.starttime, cpu_ticks, en.stat.majflt, en.stat.minflt, en.io.has_value(), en.io.value_or(PidIo{}),
           en.prev != nullptr ? en.prev->cold : nullptr};
    // Keep io from the last pass it was read in, so top rows get rates under other keys.
    if (!p.have_io && en.prev != nullptr && en.prev->have_io) {
      p.have_io = true;
      p.io = en.prev->io;
    }
    next.emplace(pid, p);
    entries.push_back(std::move(en));
  }
  ::closedir(dir);

  std::size_t top = std::min(top_n, entries.size());
  std::partial_sort(entries.begin(), entries.begin() + static_cast<std::ptrdiff_t>(top), entries.end(),
                    [](const Entry& a, const Entry& b) {
                      return a.rank != b.rank ? a.rank > b.rank : a.stat.pid < b.stat.pid;
                    });
  res.rows.reserve(top);
  for (std::size_t i = 0; i < top; ++i) {
    Entry& en = entries[i];
    ProcRow row;
    const int pid = en.stat.pid;
    row.rank = en.rank;
    row.rss_bytes = en.stat.rss_pages * static_cast<std::uint64_t>(page_size_);
    row.io = en.io;
    row.num_fds = en.fds;
    if (enrich) {
      struct stat st {};
      if (::fstatat(proc_fd_, pid_path(path, pid, nullptr), &st, 0) == 0) row.uid = st.st_uid;
      if (!row.io) row.io = read_io(pid);
      if (!row.num_fds) row.num_fds = count_fds(pid);
      Prev& slot = next.at(pid);
      if (row.io) {
        slot.have_io = true;
        slot.io = *row.io;
      }
      if (!slot.cold) slot.cold = std::make_shared<Cold>();
      Cold& cold = *slot.cold;
      std::string text;
      if (cold.cgroup_at < 0 || res.monotonic_s - cold.cgroup_at >= cold_ttl_s_) {
        cold.cgroup_at = res.monotonic_s;
        cold.cgroup.reset();
        if (read_at_all(proc_fd_, pid_path(path, pid, "cgroup"), text)) {
          try {
            cold.cgroup = primary_cgroup(parse_pid_cgroup(text));
          } catch (const ParseError&) {
          }
        }
      }
      // smaps_rollup needs Linux 4.14; kernel threads have no address space (empty file).
      if (cold.smaps_at < 0 || res.monotonic_s - cold.smaps_at >= cold_ttl_s_) {
        cold.smaps_at = res.monotonic_s;
        cold.smaps.reset();
        if (read_at_all(proc_fd_, pid_path(path, pid, "smaps_rollup"), text) && !text.empty()) {
          try {
            cold.smaps = parse_smaps_rollup(text);
          } catch (const ParseError&) {
          }
        }
      }
      row.cgroup = cold.cgroup;
      row.smaps = cold.smaps;
    }
    if (en.prev != nullptr && dt > 0) {
      const std::uint64_t now_ticks = en.stat.utime + en.stat.stime;
      row.cpu_percent = static_cast<double>(now_ticks - std::min(now_ticks, en.prev->cpu_ticks)) / tck / dt * 100.0;
      row.majflt_per_s = static_cast<double>(en.stat.majflt - std::min(en.stat.majflt, en.prev->majflt)) / dt;
      row.minflt_per_s = static_cast<double>(en.stat.minflt - std::min(en.stat.minflt, en.prev->minflt)) / dt;
      if (row.io && en.prev->have_io) {
        row.read_bytes_per_s = static_cast<double>(row.io->read_bytes - std::min(row.io->read_bytes, en.prev->io.read_bytes)) / dt;
        row.write_bytes_per_s = static_cast<double>(row.io->write_bytes - std::min(row.io->write_bytes, en.prev->io.write_bytes)) / dt;
      }
    }
    row.stat = std::move(en.stat);
    res.rows.push_back(std::move(row));
  }
  prev_.swap(next);
  for (auto& [pid, fd] : stat_fds_) ::close(fd);  // pids this pass did not list: gone
  stat_fds_.swap(kept);
  prev_time_ = res.monotonic_s;
  return res;
}

std::vector<FdHolder> ProcessScanner::fd_holders(std::size_t top_n) {
  std::lock_guard<std::mutex> lock(mu_);
  int dfd = ::openat(proc_fd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) throw ReadError(errno, join_root(root_, "/proc"));
  DIR* dir = ::fdopendir(dfd);
  if (dir == nullptr) {
    int err = errno;
    ::close(dfd);
    throw ReadError(err, join_root(root_, "/proc"));
  }
  std::vector<std::pair<std::uint64_t, int>> counts;
  while (dirent* e = ::readdir(dir)) {
    const char* name = e->d_name;
    if (name[0] < '1' || name[0] > '9') continue;
    std::uint64_t pid64 = 0;
    if (!parse_u64(name, pid64) || pid64 > INT32_MAX) continue;
    // EACCES on other users' fd directories without CAP_SYS_PTRACE: skipped, not zero.
    if (auto n = count_fds(static_cast<int>(pid64))) counts.emplace_back(*n, static_cast<int>(pid64));
  }
  ::closedir(dir);
  std::size_t top = std::min(top_n, counts.size());
  std::partial_sort(counts.begin(), counts.begin() + static_cast<std::ptrdiff_t>(top), counts.end(),
                    [](const auto& a, const auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
  std::vector<FdHolder> out;
  char path[64];
  char buf[2048];
  std::string text;
  for (std::size_t i = 0; i < top; ++i) {
    FdHolder h;
    h.num_fds = counts[i].first;
    h.pid = counts[i].second;
    long n = read_at(proc_fd_, pid_path(path, h.pid, "stat"), buf, sizeof buf);
    if (n <= 0) continue;  // exited since it was counted
    try {
      h.comm = parse_pid_stat(std::string_view(buf, static_cast<std::size_t>(n))).comm;
    } catch (const ParseError&) {
      continue;
    }
    if (read_at_all(proc_fd_, pid_path(path, h.pid, "limits"), text)) {
      try {
        h.fd_limit = parse_nofile_limit(text);
      } catch (const ParseError&) {
      }
    }
    out.push_back(std::move(h));
  }
  return out;
}

}  // namespace probe
