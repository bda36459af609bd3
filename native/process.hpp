// ProcessScanner: one walk of /proc per call. The hot path reads only
// /proc/PID/stat; uid, cgroup, io, fd counts and smaps_rollup are read for the
// top rows only (the cold path), unless the sort key needs one for every pid.
// cgroup and smaps_rollup of a top row are re-read at most every cold_ttl_s:
// smaps_rollup takes the process's mmap lock and walks every VMA (tens of
// microseconds for a small process, milliseconds for a large one), and cgroup
// membership changes far more rarely than once a pass.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "readers.hpp"

namespace probe {

struct PidStat {
  int pid = 0, ppid = 0;
  std::string comm;
  char state = '?';
  std::uint64_t minflt = 0, majflt = 0, utime = 0, stime = 0, threads = 0, starttime = 0;
  std::uint64_t rss_pages = 0;
};

struct PidIo {
  std::uint64_t read_bytes = 0, write_bytes = 0;
};

struct CgroupEntry {
  std::string hierarchy;    // "0" for the v2 unified hierarchy
  std::string controllers;  // empty for v2
  std::string path;
};

// Parses one /proc/PID/stat line; the command name may hold spaces and parentheses.
PidStat parse_pid_stat(std::string_view text);
PidIo parse_pid_io(std::string_view text);
std::vector<CgroupEntry> parse_pid_cgroup(std::string_view text);
// The cgroup that best describes the process: the v2 path on a v2-only host, else the
// v1 memory or cpu hierarchy (hybrid hosts keep resource control there).
std::string primary_cgroup(const std::vector<CgroupEntry>& entries);
Counters parse_smaps_rollup(std::string_view text);
// The soft "Max open files" of /proc/PID/limits; nullopt when "unlimited".
std::optional<std::uint64_t> parse_nofile_limit(std::string_view text);

enum class SortKey { cpu, rss, io, fds, majflt };
SortKey parse_sort_key(std::string_view key);

struct ProcRow {
  PidStat stat;
  std::uint64_t rss_bytes = 0;
  std::optional<std::uint32_t> uid;
  std::optional<std::string> cgroup;
  std::optional<PidIo> io;
  std::optional<std::uint64_t> num_fds;
  std::optional<Counters> smaps;
  std::optional<double> cpu_percent;  // of one CPU, over the interval since the last pass
  std::optional<double> majflt_per_s, minflt_per_s;
  std::optional<double> read_bytes_per_s, write_bytes_per_s;
  double rank = 0;  // the value the rows were sorted by
};

// One process by open file count, with its soft RLIMIT_NOFILE when readable.
struct FdHolder {
  int pid = 0;
  std::string comm;
  std::uint64_t num_fds = 0;
  std::optional<std::uint64_t> fd_limit;  // nullopt: unreadable or unlimited
};

struct ProcTotals {
  std::uint64_t processes = 0, threads = 0, running = 0, sleeping = 0, blocked = 0, stopped = 0,
                zombies = 0, idle = 0, other = 0;
};

struct ScanResult {
  double monotonic_s = 0;
  std::optional<double> interval_s;  // nullopt on the first pass: rates need two passes
  ProcTotals totals;
  std::uint64_t vanished = 0;  // pids listed but gone before their stat was read
  std::vector<ProcRow> rows;
};

class ProcessScanner {
 public:
  // keep_fds: how many /proc/PID/stat files stay open between passes. Re-reading an
  // open file skips the path walk and proc inode set-up, about a third of the cost
  // per pid; past the cap (or on EMFILE) files are opened and closed each pass.
  explicit ProcessScanner(std::string root = "/", double cold_ttl_s = 10.0, std::size_t keep_fds = 0);
  ~ProcessScanner();
  ProcessScanner(const ProcessScanner&) = delete;
  ProcessScanner& operator=(const ProcessScanner&) = delete;

  ScanResult scan(SortKey key, std::size_t top_n, bool enrich);
  // The processes holding the most open files, for fd exhaustion: an idle process
  // hoarding sockets never reaches the CPU-ranked rows. One stat of /proc/PID/fd per
  // pid on Linux 6.2+ (a listing before); leaves the rate state of scan() alone.
  std::vector<FdHolder> fd_holders(std::size_t top_n);
  const std::string& root() const { return root_; }
  double cold_ttl_s() const { return cold_ttl_s_; }
  std::size_t open_fds() const { return stat_fds_.size(); }

 private:
  struct Cold {
    double cgroup_at = -1, smaps_at = -1;  // monotonic time of the last read; -1: never
    std::optional<std::string> cgroup;
    std::optional<Counters> smaps;
  };
  struct Prev {
    std::uint64_t starttime, cpu_ticks, majflt, minflt;
    bool have_io;
    PidIo io;
    std::shared_ptr<Cold> cold;  // shared so passes carry it without copying
  };
  struct Entry {
    PidStat stat;
    std::optional<PidIo> io;
    std::optional<std::uint64_t> fds;
    const Prev* prev;
    double rank;
  };

  std::optional<PidIo> read_io(int pid);
  long read_stat(int pid, char* buf, std::size_t cap, std::unordered_map<int, int>& keep);
  std::optional<std::uint64_t> count_fds(int pid);

  std::string root_;
  int proc_fd_ = -1;
  bool procfs_ = false;  // a real procfs, not a fixture tree
  double cold_ttl_s_;
  std::size_t keep_fds_;
  std::unordered_map<int, int> stat_fds_;  // pid -> open /proc/PID/stat
  long clk_tck_;
  long page_size_;
  std::mutex mu_;
  std::unordered_map<int, Prev> prev_;
  double prev_time_ = -1;
};

}  // namespace probe
