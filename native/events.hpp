// Versioned binary kernel-event records (docs/event-format.md). eBPF programs
// write these into a perf or ring buffer; decode_events validates every byte
// before it is trusted and names the offset of the first one found invalid.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace probe {

inline constexpr std::uint32_t kEventMagic = 0x5645'4C49;  // "ILEV" little-endian
inline constexpr std::uint8_t kEventVersion = 1;
inline constexpr std::size_t kEventHeaderSize = 24;
inline constexpr std::size_t kEventMaxRecord = 4096;
inline constexpr std::size_t kCommLen = 16;          // TASK_COMM_LEN
inline constexpr std::size_t kMaxFilename = 256;
inline constexpr std::size_t kMaxHistSlots = 64;     // log2 buckets of a u64

enum class EventType : std::uint8_t {
  exec = 1,
  exit = 2,
  oom_kill = 3,
  tcp_retransmit = 4,
  runq_latency = 5,
  bio_latency = 6,
};

const char* event_type_name(EventType t);
bool event_type_from_name(std::string_view name, EventType& out);

struct Event {
  EventType type = EventType::exec;
  std::uint64_t ts_ns = 0;  // CLOCK_MONOTONIC (bpf_ktime_get_ns)
  std::uint32_t cpu = 0;
  // exec, exit, oom_kill, tcp_retransmit
  std::uint32_t pid = 0;
  // exec, exit
  std::uint32_t ppid = 0;
  // exec, oom_kill
  std::uint32_t uid = 0;
  std::string comm;      // exec, exit, oom_kill: up to 16 bytes
  std::string filename;  // exec: up to 256 bytes
  // exit
  std::int32_t exit_code = 0;  // raw wait status
  std::uint64_t age_ns = 0;
  // oom_kill
  std::uint64_t total_vm_kb = 0, anon_rss_kb = 0, file_rss_kb = 0, shmem_rss_kb = 0;
  std::int16_t oom_score_adj = 0;
  // tcp_retransmit
  std::uint16_t family = 0, sport = 0, dport = 0;
  std::uint8_t state = 0;
  std::array<std::uint8_t, 16> saddr{}, daddr{};
  // runq_latency, bio_latency: log2 histogram over an interval
  std::uint64_t interval_ns = 0;
  std::uint32_t dev = 0;   // bio: (major << 20) | minor; 0 for runq
  std::uint8_t unit = 0;   // 0: nanoseconds, 1: microseconds
  std::vector<std::uint64_t> slots;
};

// Throws EncodeError for values the format cannot carry.
std::string encode_events(const std::vector<Event>& events);
// Throws DecodeError (reason, offset) for truncated, oversized, unknown-version,
// unknown-type or garbage input. Never reads outside data.
std::vector<Event> decode_events(std::string_view data);

}  // namespace probe
