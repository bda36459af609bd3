#include "events.hpp"

#include <cstring>

#include "common.hpp"

namespace probe {

namespace {

static_assert(sizeof(std::uint64_t) == 8);

constexpr std::size_t kExecFixed = 32;
constexpr std::size_t kExitPayload = 40;
constexpr std::size_t kOomPayload = 64;
constexpr std::size_t kTcpPayload = 48;
constexpr std::size_t kHistFixed = 16;
constexpr std::uint16_t kAfInet = 2, kAfInet6 = 10;

// Little-endian field access, independent of host byte order and alignment.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u16(std::uint16_t v) { le(v, 2); }
  void u32(std::uint32_t v) { le(v, 4); }
  void u64(std::uint64_t v) { le(v, 8); }
  void bytes(const void* p, std::size_t n) { out_.append(static_cast<const char*>(p), n); }
  void padded(std::string_view s, std::size_t n) {
    out_.append(s.data(), s.size());
    out_.append(n - s.size(), '\0');
  }

 private:
  void le(std::uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string& out_;
};

class Reader {
 public:
  Reader(std::string_view data, std::size_t base) : d_(data), base_(base) {}
  std::uint64_t le(std::size_t at, int n) const {
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(static_cast<unsigned char>(d_[at + i])) << (8 * i);
    return v;
  }
  std::uint8_t u8(std::size_t at) const { return static_cast<std::uint8_t>(le(at, 1)); }
  std::uint16_t u16(std::size_t at) const { return static_cast<std::uint16_t>(le(at, 2)); }
  std::uint32_t u32(std::size_t at) const { return static_cast<std::uint32_t>(le(at, 4)); }
  std::uint64_t u64(std::size_t at) const { return le(at, 8); }
  std::string cstr(std::size_t at, std::size_t n) const {
    std::string_view s = d_.substr(at, n);
    return std::string(s.substr(0, s.find('\0')));
  }
  // Absolute offset of a record-relative position, for error messages.
  std::size_t abs(std::size_t at) const { return base_ + at; }

 private:
  std::string_view d_;
  std::size_t base_;
};

[[noreturn]] void bad(const char* reason, std::size_t offset, const std::string& detail) {
  throw DecodeError(reason, offset, detail);
}

void require_zero(const Reader& r, std::size_t at, int n, const char* field) {
  if (r.le(at, n) != 0) bad("malformed", r.abs(at), std::string(field) + " must be zero in version 1");
}

void check_comm(const std::string& comm) {
  if (comm.size() > kCommLen) throw EncodeError("comm longer than 16 bytes: '" + comm + "'");
}

}  // namespace

const char* event_type_name(EventType t) {
  switch (t) {
    case EventType::exec: return "exec";
    case EventType::exit: return "exit";
    case EventType::oom_kill: return "oom_kill";
    case EventType::tcp_retransmit: return "tcp_retransmit";
    case EventType::runq_latency: return "runq_latency";
    case EventType::bio_latency: return "bio_latency";
  }
  return "unknown";
}

bool event_type_from_name(std::string_view name, EventType& out) {
  for (int t = 1; t <= 6; ++t) {
    auto et = static_cast<EventType>(t);
    if (name == event_type_name(et)) {
      out = et;
      return true;
    }
  }
  return false;
}

std::string encode_events(const std::vector<Event>& events) {
  std::string out;
  for (const Event& e : events) {
    std::string payload;
    Writer w(payload);
    switch (e.type) {
      case EventType::exec:
        check_comm(e.comm);
        if (e.filename.size() > kMaxFilename) throw EncodeError("exec filename longer than 256 bytes");
        w.u32(e.pid), w.u32(e.ppid), w.u32(e.uid);
        w.u16(static_cast<std::uint16_t>(e.filename.size())), w.u16(0);
        w.padded(e.comm, kCommLen);
        w.bytes(e.filename.data(), e.filename.size());
        break;
      case EventType::exit:
        check_comm(e.comm);
        w.u32(e.pid), w.u32(e.ppid), w.u32(static_cast<std::uint32_t>(e.exit_code)), w.u32(0);
        w.u64(e.age_ns);
        w.padded(e.comm, kCommLen);
        break;
      case EventType::oom_kill:
        check_comm(e.comm);
        w.u32(e.pid), w.u32(e.uid);
        w.u64(e.total_vm_kb), w.u64(e.anon_rss_kb), w.u64(e.file_rss_kb), w.u64(e.shmem_rss_kb);
        w.u16(static_cast<std::uint16_t>(e.oom_score_adj)), w.u16(0), w.u32(0);
        w.padded(e.comm, kCommLen);
        break;
      case EventType::tcp_retransmit:
        if (e.family != kAfInet && e.family != kAfInet6)
          throw EncodeError("tcp_retransmit family must be 2 (AF_INET) or 10 (AF_INET6)");
        w.u32(e.pid), w.u16(e.family), w.u16(e.sport), w.u16(e.dport), w.u8(e.state), w.u8(0), w.u32(0);
        w.bytes(e.saddr.data(), 16), w.bytes(e.daddr.data(), 16);
        break;
      case EventType::runq_latency:
      case EventType::bio_latency:
        if (e.slots.empty() || e.slots.size() > kMaxHistSlots)
          throw EncodeError("histogram needs 1 to 64 slots, got " + std::to_string(e.slots.size()));
        if (e.unit > 1) throw EncodeError("histogram unit must be 0 (ns) or 1 (us)");
        w.u64(e.interval_ns), w.u32(e.dev), w.u8(e.unit), w.u8(static_cast<std::uint8_t>(e.slots.size())), w.u16(0);
        for (auto v : e.slots) w.u64(v);
        break;
      default:
        throw EncodeError("unknown event type " + std::to_string(static_cast<int>(e.type)));
    }
    Writer h(out);
    h.u32(kEventMagic), h.u8(kEventVersion), h.u8(static_cast<std::uint8_t>(e.type));
    h.u16(static_cast<std::uint16_t>(kEventHeaderSize + payload.size()));
    h.u64(e.ts_ns), h.u32(e.cpu), h.u32(0);
    out += payload;
  }
  return out;
}

std::vector<Event> decode_events(std::string_view data) {
  std::vector<Event> out;
  std::size_t off = 0;
  while (off < data.size()) {
    std::size_t left = data.size() - off;
    if (left < kEventHeaderSize)
      bad("truncated", off, std::to_string(left) + " bytes left, a header needs 24");
    Reader r(data.substr(off), off);
    if (r.u32(0) != kEventMagic) bad("bad_magic", off, "not an incidentlab event record");
    if (r.u8(4) != kEventVersion)
      bad("unknown_version", off + 4, "version " + std::to_string(r.u8(4)) + ", this decoder reads 1");
    std::size_t len = r.u16(6);
    if (len < kEventHeaderSize) bad("bad_length", off + 6, "length " + std::to_string(len) + " is shorter than the header");
    if (len > kEventMaxRecord) bad("oversized", off + 6, "length " + std::to_string(len) + " exceeds 4096");
    if (len > left)
      bad("truncated", off, "record of " + std::to_string(len) + " bytes, " + std::to_string(left) + " left");
    require_zero(r, 20, 4, "header reserved field");
    Event e;
    std::uint8_t type = r.u8(5);
    e.ts_ns = r.u64(8);
    e.cpu = r.u32(16);
    std::size_t plen = len - kEventHeaderSize;
    const std::size_t p = kEventHeaderSize;
    auto need = [&](std::size_t want) {
      if (plen != want)
        bad("malformed", off + 6, std::string(event_type_name(e.type)) + " record needs length " +
                                      std::to_string(kEventHeaderSize + want) + ", got " + std::to_string(len));
    };
    switch (type) {
      case 1: {
        e.type = EventType::exec;
        if (plen < kExecFixed) need(kExecFixed);
        e.pid = r.u32(p), e.ppid = r.u32(p + 4), e.uid = r.u32(p + 8);
        std::size_t flen = r.u16(p + 12);
        if (flen > kMaxFilename) bad("malformed", r.abs(p + 12), "filename length " + std::to_string(flen) + " exceeds 256");
        require_zero(r, p + 14, 2, "exec reserved field");
        need(kExecFixed + flen);
        e.comm = r.cstr(p + 16, kCommLen);
        e.filename = std::string(data.substr(off + p + kExecFixed, flen));
        break;
      }
      case 2:
        e.type = EventType::exit;
        need(kExitPayload);
        e.pid = r.u32(p), e.ppid = r.u32(p + 4), e.exit_code = static_cast<std::int32_t>(r.u32(p + 8));
        require_zero(r, p + 12, 4, "exit reserved field");
        e.age_ns = r.u64(p + 16);
        e.comm = r.cstr(p + 24, kCommLen);
        break;
      case 3:
        e.type = EventType::oom_kill;
        need(kOomPayload);
        e.pid = r.u32(p), e.uid = r.u32(p + 4);
        e.total_vm_kb = r.u64(p + 8), e.anon_rss_kb = r.u64(p + 16);
        e.file_rss_kb = r.u64(p + 24), e.shmem_rss_kb = r.u64(p + 32);
        e.oom_score_adj = static_cast<std::int16_t>(r.u16(p + 40));
        require_zero(r, p + 42, 2, "oom_kill reserved field");
        require_zero(r, p + 44, 4, "oom_kill reserved field");
        e.comm = r.cstr(p + 48, kCommLen);
        break;
      case 4:
        e.type = EventType::tcp_retransmit;
        need(kTcpPayload);
        e.pid = r.u32(p), e.family = r.u16(p + 4), e.sport = r.u16(p + 6), e.dport = r.u16(p + 8);
        if (e.family != kAfInet && e.family != kAfInet6)
          bad("malformed", r.abs(p + 4), "address family " + std::to_string(e.family) + " is neither AF_INET nor AF_INET6");
        e.state = r.u8(p + 10);
        require_zero(r, p + 11, 1, "tcp_retransmit reserved field");
        require_zero(r, p + 12, 4, "tcp_retransmit reserved field");
        std::memcpy(e.saddr.data(), data.data() + off + p + 16, 16);
        std::memcpy(e.daddr.data(), data.data() + off + p + 32, 16);
        break;
      case 5:
      case 6: {
        e.type = static_cast<EventType>(type);
        if (plen < kHistFixed) need(kHistFixed + 8);
        e.interval_ns = r.u64(p), e.dev = r.u32(p + 8), e.unit = r.u8(p + 12);
        std::size_t n = r.u8(p + 13);
        if (e.unit > 1) bad("malformed", r.abs(p + 12), "histogram unit " + std::to_string(e.unit) + " is not 0 (ns) or 1 (us)");
        if (n == 0 || n > kMaxHistSlots) bad("malformed", r.abs(p + 13), "histogram slot count " + std::to_string(n) + " not in 1..64");
        require_zero(r, p + 14, 2, "histogram reserved field");
        need(kHistFixed + 8 * n);
        e.slots.resize(n);
        for (std::size_t i = 0; i < n; ++i) e.slots[i] = r.u64(p + kHistFixed + 8 * i);
        break;
      }
      default:
        bad("unknown_type", off + 5, "record type " + std::to_string(type));
    }
    out.push_back(std::move(e));
    off += len;
  }
  return out;
}

}  // namespace probe
