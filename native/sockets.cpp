#include "sockets.hpp"

#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>

#include "common.hpp"

namespace probe {

namespace {

// Keeps the n largest by key in a min-heap; ties keep the first seen.
template <typename Key>
void keep_top(std::vector<TcpSocket>& heap, const TcpSocket& s, std::size_t n, Key key) {
  if (n == 0) return;
  auto greater = [&](const TcpSocket& a, const TcpSocket& b) { return key(a) > key(b); };
  if (heap.size() < n) {
    heap.push_back(s);
    std::push_heap(heap.begin(), heap.end(), greater);
  } else if (key(s) > key(heap.front())) {
    std::pop_heap(heap.begin(), heap.end(), greater);
    heap.back() = s;
    std::push_heap(heap.begin(), heap.end(), greater);
  }
}

template <typename Key>
void sort_desc(std::vector<TcpSocket>& v, Key key) {
  std::stable_sort(v.begin(), v.end(), [&](const TcpSocket& a, const TcpSocket& b) { return key(a) > key(b); });
}

double fill(const TcpSocket& s) {
  return s.wqueue == 0 ? static_cast<double>(s.rqueue) : static_cast<double>(s.rqueue) / s.wqueue;
}

constexpr int kListen = 10;  // TCP_LISTEN

bool parse_hex_u32(std::string_view s, std::uint32_t& out) {
  if (s.empty() || s.size() > 8) return false;
  std::uint32_t v = 0;
  for (char c : s) {
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    v = (v << 4) | static_cast<std::uint32_t>(d);
  }
  out = v;
  return true;
}

// "0100007F:1F90": the address is the kernel's __be32 words printed as host-order hex.
bool parse_endpoint(std::string_view s, std::uint16_t family, std::array<std::uint8_t, 16>& addr, std::uint16_t& port) {
  auto colon = s.find(':');
  if (colon == std::string_view::npos) return false;
  std::string_view a = s.substr(0, colon);
  std::uint32_t p = 0;
  if (!parse_hex_u32(s.substr(colon + 1), p) || p > 0xffff) return false;
  port = static_cast<std::uint16_t>(p);
  std::size_t words = family == AF_INET ? 1 : 4;
  if (a.size() != words * 8) return false;
  addr.fill(0);
  for (std::size_t w = 0; w < words; ++w) {
    std::uint32_t v = 0;
    if (!parse_hex_u32(a.substr(w * 8, 8), v)) return false;
    std::memcpy(addr.data() + 4 * w, &v, 4);  // back to the kernel's byte order
  }
  return true;
}

}  // namespace

const char* tcp_state_name(int state) {
  static constexpr const char* names[kTcpStateCount] = {
      "UNKNOWN", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
      "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"};
  return state >= 0 && state < kTcpStateCount ? names[state] : "UNKNOWN";
}

void TcpSummarizer::add(const TcpSocket& s) {
  ++sum_.total;
  sum_.states[s.state < kTcpStateCount ? s.state : 0]++;
  if (s.retransmits > 0) ++sum_.in_rto_backoff;
  if (s.state == kListen) {
    ++sum_.listen_sockets;
    // A listener is near overflow once its accept queue reaches ratio * backlog; with
    // the backlog unknown (the /proc fallback) any queued connection is reported.
    bool near = s.backlog_known ? s.wqueue > 0 && static_cast<double>(s.rqueue) >= ratio_ * s.wqueue : s.rqueue > 0;
    if (near) keep_top(sum_.listeners_near_backlog, s, top_n_, fill);
    return;
  }
  sum_.rqueue_bytes += s.rqueue;
  sum_.wqueue_bytes += s.wqueue;
  if (s.rqueue > 0) keep_top(sum_.top_rqueue, s, top_n_, [](const TcpSocket& x) { return x.rqueue; });
  if (s.wqueue > 0) keep_top(sum_.top_wqueue, s, top_n_, [](const TcpSocket& x) { return x.wqueue; });
  if (s.total_retrans > 0 || s.retransmits > 0)
    keep_top(sum_.top_retrans, s, top_n_,
             [](const TcpSocket& x) { return (static_cast<std::uint64_t>(x.total_retrans) << 8) | x.retransmits; });
}

TcpSummary TcpSummarizer::finish(std::string source) {
  sort_desc(sum_.listeners_near_backlog, fill);
  sort_desc(sum_.top_rqueue, [](const TcpSocket& x) { return x.rqueue; });
  sort_desc(sum_.top_wqueue, [](const TcpSocket& x) { return x.wqueue; });
  sort_desc(sum_.top_retrans,
            [](const TcpSocket& x) { return (static_cast<std::uint64_t>(x.total_retrans) << 8) | x.retransmits; });
  sum_.source = std::move(source);
  TcpSummary out = std::move(sum_);
  sum_ = TcpSummary{};
  return out;
}

void parse_proc_net_tcp(std::string_view text, std::uint16_t family, TcpSummarizer& out) {
  // "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
  LineReader lines(text);
  std::string_view line;
  bool header = true;
  while (lines.next(line)) {
    if (header) {
      header = false;
      continue;
    }
    auto f = split_ws(line);
    if (f.empty()) continue;
    TcpSocket s;
    s.family = family;
    std::uint32_t st = 0, txq = 0, rxq = 0, retr = 0;
    std::uint64_t uid = 0, inode = 0;
    bool ok = f.size() >= 10 && parse_endpoint(f[1], family, s.saddr, s.sport) &&
              parse_endpoint(f[2], family, s.daddr, s.dport) && parse_hex_u32(f[3], st) && st < kTcpStateCount;
    if (ok) {
      auto colon = f[4].find(':');
      ok = colon != std::string_view::npos && parse_hex_u32(f[4].substr(0, colon), txq) &&
           parse_hex_u32(f[4].substr(colon + 1), rxq) && parse_hex_u32(f[6], retr) && parse_u64(f[7], uid) &&
           parse_u64(f[9], inode) && uid <= UINT32_MAX;
    }
    if (!ok) {
      out.count_malformed();
      continue;
    }
    s.state = static_cast<std::uint8_t>(st);
    s.rqueue = rxq;
    s.wqueue = s.state == kListen ? 0 : txq;  // for listeners the kernel prints no backlog here
    s.retransmits = static_cast<std::uint8_t>(std::min<std::uint32_t>(retr, 255));
    s.uid = static_cast<std::uint32_t>(uid);
    s.inode = inode;
    out.add(s);
  }
}

TcpSummary read_proc_net_tcp(const std::string& root, std::size_t top_n, double backlog_ratio) {
  TcpSummarizer sum(top_n, backlog_ratio);
  parse_proc_net_tcp(read_file(join_root(root, "/proc/net/tcp")), AF_INET, sum);
  std::string text;
  int err = 0;
  // IPv6 may be compiled out or disabled (ipv6.disable=1): then there is no tcp6 file.
  if (try_read_file(join_root(root, "/proc/net/tcp6"), text, &err)) parse_proc_net_tcp(text, AF_INET6, sum);
  return sum.finish("proc");
}

namespace {

class NetlinkSocket {
 public:
  explicit NetlinkSocket(int protocol) : fd_(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, protocol)) {
    if (fd_ < 0) throw ReadError(errno, "netlink socket (protocol " + std::to_string(protocol) + ")");
  }
  ~NetlinkSocket() { ::close(fd_); }
  NetlinkSocket(const NetlinkSocket&) = delete;
  NetlinkSocket& operator=(const NetlinkSocket&) = delete;
  int fd() const { return fd_; }

 private:
  int fd_;
};

void send_request(int fd, const void* msg, std::size_t len) {
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(fd, msg, len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0)
    throw ReadError(errno, "sock_diag dump request");
}

// Reads one dump's answers into sum. Returns the errno of an NLMSG_ERROR answer
// (0 when the dump completed); an error after sockets were added is thrown.
int read_dump(int fd, std::uint16_t reply_type, std::uint32_t seq, TcpSummarizer& sum) {
  bool any = false;
  alignas(nlmsghdr) static thread_local char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw ReadError(errno, "sock_diag dump");
    }
    if (n == 0) throw ReadError(EIO, "sock_diag dump ended without NLMSG_DONE");
    int len = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_seq != seq) continue;
      if (h->nlmsg_type == NLMSG_DONE) return 0;
      if (h->nlmsg_type == NLMSG_ERROR) {
        auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
        int err = h->nlmsg_len >= NLMSG_LENGTH(sizeof(nlmsgerr)) ? -e->error : EIO;
        if (any) throw ReadError(err != 0 ? err : EIO, "sock_diag dump");
        return err != 0 ? err : EIO;
      }
      any = true;
      if (h->nlmsg_type != reply_type || h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) {
        sum.count_malformed();
        continue;
      }
      auto* m = static_cast<inet_diag_msg*>(NLMSG_DATA(h));
      TcpSocket s;
      s.family = m->idiag_family;
      s.state = m->idiag_state < kTcpStateCount ? m->idiag_state : 0;
      s.sport = ntohs(m->id.idiag_sport);
      s.dport = ntohs(m->id.idiag_dport);
      std::memcpy(s.saddr.data(), m->id.idiag_src, 16);
      std::memcpy(s.daddr.data(), m->id.idiag_dst, 16);
      s.rqueue = m->idiag_rqueue;
      s.wqueue = m->idiag_wqueue;
      s.backlog_known = s.state == kListen;
      s.uid = m->idiag_uid;
      s.inode = m->idiag_inode;
      int alen = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof(inet_diag_msg)));
      for (auto* a = reinterpret_cast<rtattr*>(m + 1); RTA_OK(a, alen); a = RTA_NEXT(a, alen)) {
        if (a->rta_type != INET_DIAG_INFO) continue;
        // tcp_info grows with kernels: copy what both sides know.
        tcp_info info{};
        std::size_t have = std::min<std::size_t>(RTA_PAYLOAD(a), sizeof info);
        std::memcpy(&info, RTA_DATA(a), have);
        if (have >= offsetof(tcp_info, tcpi_total_retrans) + sizeof info.tcpi_total_retrans) {
          s.has_info = true;
          s.retransmits = info.tcpi_retransmits;
          s.total_retrans = info.tcpi_total_retrans;
          s.rtt_us = info.tcpi_rtt;
          s.lost = info.tcpi_lost;
        }
      }
      sum.add(s);
    }
  }
}

constexpr std::uint32_t kStatesAll = ~0u;
constexpr std::uint8_t kExtInfo = 1u << (INET_DIAG_INFO - 1);

// The original TCPDIAG_GETSOCK request dumps both families in one walk of the
// established hash (the per-family requests walk it once each: on a host with a
// large hash table that walk, not the sockets, is most of the cost).
int dump_both_families(int fd, TcpSummarizer& sum) {
  struct {
    nlmsghdr nlh;
    inet_diag_req req;
  } msg{};
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = TCPDIAG_GETSOCK;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  msg.nlh.nlmsg_seq = 1;
  msg.req.idiag_states = kStatesAll;
  msg.req.idiag_ext = kExtInfo;
  send_request(fd, &msg, sizeof msg);
  return read_dump(fd, TCPDIAG_GETSOCK, 1, sum);
}

int dump_family(int fd, std::uint8_t family, std::uint32_t seq, TcpSummarizer& sum) {
  struct {
    nlmsghdr nlh;
    inet_diag_req_v2 req;
  } msg{};
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  msg.nlh.nlmsg_seq = seq;
  msg.req.sdiag_family = family;
  msg.req.sdiag_protocol = IPPROTO_TCP;
  msg.req.idiag_states = kStatesAll;
  msg.req.idiag_ext = kExtInfo;
  send_request(fd, &msg, sizeof msg);
  return read_dump(fd, SOCK_DIAG_BY_FAMILY, seq, sum);
}

}  // namespace

TcpSummary sock_diag_tcp(std::size_t top_n, double backlog_ratio, bool per_family) {
  NetlinkSocket nl(NETLINK_SOCK_DIAG);
  if (!per_family) {
    TcpSummarizer sum(top_n, backlog_ratio);
    if (dump_both_families(nl.fd(), sum) == 0) return sum.finish("sock_diag");
  }
  // A kernel without the compatibility request: one dump per family.
  TcpSummarizer sum(top_n, backlog_ratio);
  if (int err = dump_family(nl.fd(), AF_INET, 2, sum); err != 0) throw ReadError(err, "sock_diag dump");
  // EAFNOSUPPORT/ENOENT for IPv6: the inet6 diag module is absent (IPv6 off).
  if (int err = dump_family(nl.fd(), AF_INET6, 3, sum); err != 0 && err != EAFNOSUPPORT && err != ENOENT)
    throw ReadError(err, "sock_diag dump");
  return sum.finish("sock_diag");
}

}  // namespace probe
