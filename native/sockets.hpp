// TCP socket state: sock_diag over netlink (kernel path) or /proc/net/tcp{,6}
// (file path), both folded by one TcpSummarizer so a host with a million
// sockets costs bounded memory: counts plus a few top-N lists.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace probe {

inline constexpr int kTcpStateCount = 13;  // TCP_ESTABLISHED (1) .. TCP_NEW_SYN_RECV (12)
const char* tcp_state_name(int state);

struct TcpSocket {
  std::uint16_t family = 2;
  std::uint8_t state = 0;
  std::uint16_t sport = 0, dport = 0;
  std::array<std::uint8_t, 16> saddr{}, daddr{};
  std::uint32_t rqueue = 0;  // LISTEN: current accept queue; else bytes not yet read
  std::uint32_t wqueue = 0;  // LISTEN: the backlog (sock_diag only); else bytes not yet acked
  bool backlog_known = false;
  std::uint32_t uid = 0;
  std::uint64_t inode = 0;
  // From tcp_info (sock_diag only); the /proc fallback has the RTO count only.
  bool has_info = false;
  std::uint8_t retransmits = 0;      // consecutive RTOs now outstanding
  std::uint32_t total_retrans = 0;   // segments retransmitted over the socket's life
  std::uint32_t rtt_us = 0;
  std::uint32_t lost = 0;
};

struct TcpSummary {
  std::string source;  // "sock_diag" or "proc"
  std::uint64_t total = 0;
  std::uint64_t states[kTcpStateCount] = {};
  std::uint64_t listen_sockets = 0;
  std::uint64_t in_rto_backoff = 0;  // sockets with retransmits > 0 right now
  std::uint64_t rqueue_bytes = 0, wqueue_bytes = 0;  // summed over non-listen sockets
  std::vector<TcpSocket> listeners_near_backlog;  // accept queue >= ratio * backlog, fullest first
  std::vector<TcpSocket> top_rqueue, top_wqueue, top_retrans;
  std::uint64_t malformed = 0;  // records skipped as garbage
};

class TcpSummarizer {
 public:
  TcpSummarizer(std::size_t top_n, double backlog_ratio) : top_n_(top_n), ratio_(backlog_ratio) {}
  void add(const TcpSocket& s);
  TcpSummary finish(std::string source);
  void count_malformed() { ++sum_.malformed; }

 private:
  std::size_t top_n_;
  double ratio_;
  TcpSummary sum_;
};

// Parses /proc/net/tcp or /proc/net/tcp6 text into the summarizer.
void parse_proc_net_tcp(std::string_view text, std::uint16_t family, TcpSummarizer& out);
// Both families from files under root.
TcpSummary read_proc_net_tcp(const std::string& root, std::size_t top_n, double backlog_ratio);
// Both families through NETLINK_SOCK_DIAG in this process's network namespace: one
// TCPDIAG_GETSOCK dump, or (per_family, and on kernels that refuse it) one
// SOCK_DIAG_BY_FAMILY dump per family. Throws ReadError (with errno) on failure.
TcpSummary sock_diag_tcp(std::size_t top_n, double backlog_ratio, bool per_family = false);

}  // namespace probe
