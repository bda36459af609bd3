#include "taskstats.hpp"

#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>

#include "common.hpp"

namespace probe {

namespace {

constexpr std::size_t kBuf = 16 * 1024;

struct Request {
  nlmsghdr nlh;
  genlmsghdr genl;
  char attrs[64];
};

void put_attr(Request& r, std::uint16_t type, const void* data, std::size_t len) {
  auto* a = reinterpret_cast<nlattr*>(reinterpret_cast<char*>(&r) + NLMSG_ALIGN(r.nlh.nlmsg_len));
  a->nla_type = type;
  a->nla_len = static_cast<std::uint16_t>(NLA_HDRLEN + len);
  std::memcpy(reinterpret_cast<char*>(a) + NLA_HDRLEN, data, len);
  r.nlh.nlmsg_len = NLMSG_ALIGN(r.nlh.nlmsg_len) + NLA_ALIGN(a->nla_len);
}

// Walks attributes in [p, p+len) without trusting any length beyond the buffer.
template <typename F>
void for_attrs(const char* p, std::size_t len, F f) {
  while (len >= NLA_HDRLEN) {
    const auto* a = reinterpret_cast<const nlattr*>(p);
    if (a->nla_len < NLA_HDRLEN || a->nla_len > len) return;
    f(static_cast<std::uint16_t>(a->nla_type & NLA_TYPE_MASK), p + NLA_HDRLEN, a->nla_len - NLA_HDRLEN);
    std::size_t step = NLA_ALIGN(a->nla_len);
    if (step >= len) return;
    p += step;
    len -= step;
  }
}

}  // namespace

Taskstats::Taskstats() {
  fd_ = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
  if (fd_ < 0) throw ReadError(errno, "generic netlink socket");
  timeval tv{2, 0};  // a kernel answer never takes this long; bounded all the same
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  Request r{};
  r.nlh.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN);
  r.nlh.nlmsg_type = GENL_ID_CTRL;
  r.nlh.nlmsg_flags = NLM_F_REQUEST;
  r.nlh.nlmsg_seq = ++seq_;
  r.genl.cmd = CTRL_CMD_GETFAMILY;
  r.genl.version = 1;
  put_attr(r, CTRL_ATTR_FAMILY_NAME, TASKSTATS_GENL_NAME, std::strlen(TASKSTATS_GENL_NAME) + 1);
  std::string buf(kBuf, '\0');
  if (::send(fd_, &r, r.nlh.nlmsg_len, 0) < 0) {
    int e = errno;
    ::close(fd_);
    throw ReadError(e, "taskstats family lookup");
  }
  ssize_t n = ::recv(fd_, buf.data(), buf.size(), 0);
  if (n < 0) {
    int e = errno;
    ::close(fd_);
    throw ReadError(e, "taskstats family lookup");
  }
  int len = static_cast<int>(n);
  for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
    if (h->nlmsg_type == NLMSG_ERROR) {
      auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
      int err = -e->error;
      ::close(fd_);
      // ENOENT: the kernel lacks CONFIG_TASKSTATS.
      throw ReadError(err != 0 ? err : EIO, "taskstats family lookup");
    }
    if (h->nlmsg_len < NLMSG_LENGTH(GENL_HDRLEN)) continue;
    const char* p = static_cast<const char*>(NLMSG_DATA(h)) + GENL_HDRLEN;
    for_attrs(p, h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN), [&](std::uint16_t type, const char* data, std::size_t dlen) {
      if (type == CTRL_ATTR_FAMILY_ID && dlen >= 2) std::memcpy(&family_, data, 2);
    });
  }
  if (family_ == 0) {
    ::close(fd_);
    throw ReadError(ENOENT, "taskstats family lookup (no family id in the answer)");
  }
}

Taskstats::~Taskstats() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<TaskDelays> Taskstats::tgid(std::uint32_t tgid) {
  Request r{};
  r.nlh.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN);
  r.nlh.nlmsg_type = family_;
  r.nlh.nlmsg_flags = NLM_F_REQUEST;
  r.nlh.nlmsg_seq = ++seq_;
  r.genl.cmd = TASKSTATS_CMD_GET;
  r.genl.version = 1;
  put_attr(r, TASKSTATS_CMD_ATTR_TGID, &tgid, sizeof tgid);
  if (::send(fd_, &r, r.nlh.nlmsg_len, 0) < 0) throw ReadError(errno, "taskstats request");
  alignas(nlmsghdr) char buf[kBuf];
  for (;;) {
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw ReadError(errno, "taskstats answer");
    }
    int len = static_cast<int>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_seq != r.nlh.nlmsg_seq) continue;  // a late answer to an earlier request
      if (h->nlmsg_type == NLMSG_ERROR) {
        auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
        int err = -e->error;
        if (err == ESRCH) return std::nullopt;
        throw ReadError(err != 0 ? err : EIO, "taskstats of tgid " + std::to_string(tgid));
      }
      if (h->nlmsg_len < NLMSG_LENGTH(GENL_HDRLEN)) throw ReadError(EIO, "taskstats answer too short");
      std::optional<TaskDelays> out;
      const char* p = static_cast<const char*>(NLMSG_DATA(h)) + GENL_HDRLEN;
      for_attrs(p, h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN), [&](std::uint16_t type, const char* data, std::size_t dlen) {
        if (type != TASKSTATS_TYPE_AGGR_TGID && type != TASKSTATS_TYPE_AGGR_PID) return;
        for_attrs(data, dlen, [&](std::uint16_t inner, const char* d, std::size_t l) {
          if (inner != TASKSTATS_TYPE_STATS) return;
          // struct taskstats grows by version; copy what both sides know.
          taskstats ts{};
          std::size_t have = std::min(l, sizeof ts);
          std::memcpy(&ts, d, have);
          if (have < offsetof(taskstats, freepages_delay_total) + sizeof ts.freepages_delay_total) return;
          TaskDelays t;
          t.pid = tgid;
          t.version = ts.version;
          t.cpu_count = ts.cpu_count, t.cpu_delay_ns = ts.cpu_delay_total;
          t.blkio_count = ts.blkio_count, t.blkio_delay_ns = ts.blkio_delay_total;
          t.swapin_count = ts.swapin_count, t.swapin_delay_ns = ts.swapin_delay_total;
          t.freepages_count = ts.freepages_count, t.freepages_delay_ns = ts.freepages_delay_total;
          t.cpu_run_real_ns = ts.cpu_run_real_total, t.cpu_run_virtual_ns = ts.cpu_run_virtual_total;
          t.voluntary_switches = ts.nvcsw, t.involuntary_switches = ts.nivcsw;
          if (ts.version >= 9 && have >= offsetof(taskstats, compact_delay_total) + sizeof ts.compact_delay_total) {
            t.thrashing_count = ts.thrashing_count, t.thrashing_delay_ns = ts.thrashing_delay_total;
            t.compact_count = ts.compact_count, t.compact_delay_ns = ts.compact_delay_total;
          }
          out = t;
        });
      });
      if (!out) throw ReadError(EIO, "taskstats answer without stats for tgid " + std::to_string(tgid));
      return out;
    }
  }
}

}  // namespace probe
