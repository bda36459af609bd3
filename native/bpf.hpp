// BPF maps and a perf-event output buffer, read through the bpf() and perf_event_open()
// syscalls alone: the collector keeps programs a short-lived loader compiled with bcc
// (whose LLVM would otherwise stay in the collector's memory) and reads them here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace probe {

struct BpfMapInfo {
  std::uint32_t type = 0, key_size = 0, value_size = 0, max_entries = 0;
  std::string name;
};

// Throws UnavailableError (with errno text) when fd is not a BPF map.
BpfMapInfo bpf_map_info(int fd);

// Every (key, value) of a hash or array map, each key once, at most max_entries of them: a
// map that changes under the walk (a hash map restarts a walk whose key was deleted) is read
// in at most 2 * max_entries steps. Per-CPU maps are refused (values per possible CPU).
std::vector<std::pair<std::string, std::string>> bpf_map_items(int fd);

// What one pass over a perf ring holds: RAW samples, the kernel's lost counts, and
// records that cannot be what the kernel writes (the rest of the ring is skipped).
struct PerfDrain {
  std::vector<std::string> samples;
  std::uint64_t lost = 0;
  std::uint64_t corrupt = 0;
};

// Pure: the records between tail and head of a ring of ring.size() bytes (a power of
// two), as the kernel lays them out (perf_event_header, wrapping at the end). At most
// max_samples samples; the position after the last record read goes to *new_tail.
PerfDrain parse_perf_ring(std::string_view ring, std::uint64_t tail, std::uint64_t head,
                          std::size_t max_samples, std::uint64_t* new_tail);

// One PERF_COUNT_SW_BPF_OUTPUT event per CPU, mmapped, its fd put in a
// BPF_MAP_TYPE_PERF_EVENT_ARRAY at that CPU's index (what bcc's open_perf_buffer does).
class BpfPerfBuffer {
 public:
  BpfPerfBuffer(int map_fd, const std::vector<int>& cpus, int page_cnt);
  ~BpfPerfBuffer();
  BpfPerfBuffer(const BpfPerfBuffer&) = delete;
  BpfPerfBuffer& operator=(const BpfPerfBuffer&) = delete;

  // Drains every CPU's ring without blocking: (cpu, sample) in ring order per CPU. Each call
  // starts at the next CPU, so max_samples never leaves the same CPUs' rings undrained.
  std::vector<std::pair<int, std::string>> poll(std::size_t max_samples);
  std::uint64_t lost() const;
  std::uint64_t corrupt() const;
  // Safe against a poll on another thread: the rings are unmapped only between polls.
  void close();

 private:
  struct Ring {
    int cpu = -1;
    int fd = -1;
    void* base = nullptr;
  };
  void close_locked();

  mutable std::mutex mu_;
  std::vector<Ring> rings_;
  std::size_t page_size_ = 0, data_size_ = 0, next_ = 0;
  std::uint64_t lost_ = 0, corrupt_ = 0;
};

}  // namespace probe
