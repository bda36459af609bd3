// Per-process delay accounting through the taskstats generic-netlink family.
// Needs CAP_NET_ADMIN (the command is GENL_ADMIN_PERM); delays stay zero unless
// delay accounting is on (kernel.task_delayacct=1 or delayacct on the command line).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace probe {

struct TaskDelays {
  std::uint32_t pid = 0;
  std::uint16_t version = 0;  // struct taskstats version the kernel answered with
  std::uint64_t cpu_count = 0, cpu_delay_ns = 0;
  std::uint64_t blkio_count = 0, blkio_delay_ns = 0;
  std::uint64_t swapin_count = 0, swapin_delay_ns = 0;
  std::uint64_t freepages_count = 0, freepages_delay_ns = 0;  // direct memory reclaim
  std::optional<std::uint64_t> thrashing_count, thrashing_delay_ns;  // version >= 9
  std::optional<std::uint64_t> compact_count, compact_delay_ns;      // version >= 9
  std::uint64_t cpu_run_real_ns = 0, cpu_run_virtual_ns = 0;
  std::uint64_t voluntary_switches = 0, involuntary_switches = 0;
};

class Taskstats {
 public:
  // Opens the socket and resolves the family id; throws ReadError when that fails.
  Taskstats();
  ~Taskstats();
  Taskstats(const Taskstats&) = delete;
  Taskstats& operator=(const Taskstats&) = delete;

  // The whole thread group of tgid. nullopt when the process is gone (ESRCH);
  // throws ReadError for anything else (EPERM without CAP_NET_ADMIN).
  std::optional<TaskDelays> tgid(std::uint32_t tgid);
  std::uint16_t family_id() const { return family_; }

 private:
  int fd_ = -1;
  std::uint16_t family_ = 0;
  std::uint32_t seq_ = 0;
};

}  // namespace probe
