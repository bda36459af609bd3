// nanobind bindings for probe_core: the only file that knows about Python.
// It converts the core's structs into plain dicts and lists, releases the GIL
// around file and syscall work, and maps the C++ error tree onto Python types.
#include <Python.h>
#include <arpa/inet.h>
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <functional>
#include <string_view>
#include <unordered_map>
#include <stdexcept>

#include "bpf.hpp"
#include "caps.hpp"
#include "common.hpp"
#include "crc32c.hpp"
#include "events.hpp"
#include "gzip.hpp"
#include "json_check.hpp"
#include "perf.hpp"
#include "process.hpp"
#include "readers.hpp"
#include "robust.hpp"
#include "sockets.hpp"
#include "taskstats.hpp"

namespace nb = nanobind;
using namespace nb::literals;

#ifndef PROBE_CORE_VERSION
#define PROBE_CORE_VERSION "0.0.0"
#endif

namespace {

PyObject* ProbeErrorType = nullptr;
PyObject* ReadErrorType = nullptr;
PyObject* ParseErrorType = nullptr;
PyObject* DecodeErrorType = nullptr;
PyObject* EncodeErrorType = nullptr;
PyObject* DecompressErrorType = nullptr;
PyObject* OutputLimitErrorType = nullptr;
PyObject* UnavailableErrorType = nullptr;

PyObject* new_error(nb::module_& m, const char* name, const char* doc, PyObject* bases) {
  std::string qualified = std::string("probe_core.") + name;
  PyObject* t = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases, nullptr);
  if (t == nullptr) throw nb::python_error();
  Py_XDECREF(bases);
  m.attr(name) = nb::handle(t);
  return t;
}

void raise_with_attrs(PyObject* type, PyObject* args, std::initializer_list<std::pair<const char*, PyObject*>> attrs) {
  PyObject* exc = args ? PyObject_CallObject(type, args) : nullptr;
  Py_XDECREF(args);
  if (exc == nullptr) return;  // the constructor's own error stays set
  for (auto& [k, v] : attrs) {
    PyObject_SetAttrString(exc, k, v);
    Py_XDECREF(v);
  }
  PyErr_SetObject(type, exc);
  Py_DECREF(exc);
}

// Kernel strings (comm, cgroup paths, interface names) are bytes, not UTF-8.
nb::str kstr(std::string_view s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "backslashreplace");
  if (o == nullptr) throw nb::python_error();
  return nb::steal<nb::str>(o);
}

// Counter and field names repeat every call; creating their str objects was a
// measurable share of a snapshot. The cache is bounded, filled only with names
// the kernel or this file chose (parse_* on caller text bypasses it), and never
// freed on purpose: it must outlive the module at interpreter shutdown.
struct NameHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

nb::object key(std::string_view name, bool cache = true) {
  static auto* names = new std::unordered_map<std::string, PyObject*, NameHash, std::equal_to<>>();
  if (cache) {
    auto it = names->find(name);
    if (it != names->end()) return nb::borrow(it->second);
  }
  PyObject* s = PyUnicode_DecodeUTF8(name.data(), static_cast<Py_ssize_t>(name.size()), "backslashreplace");
  if (s == nullptr) throw nb::python_error();
  if (cache && names->size() < 8192) {
    Py_INCREF(s);
    names->emplace(std::string(name), s);
  }
  return nb::steal(s);
}

// Runs file and syscall work with the GIL released; conversion happens after, with it held.
template <typename F>
auto without_gil(F&& f) {
  nb::gil_scoped_release release;
  return f();
}

template <typename T>
nb::object opt(const std::optional<T>& v) {
  return v ? nb::cast(*v) : nb::none();
}

nb::dict counters(const probe::Counters& c, bool cache = true) {
  nb::dict d;
  for (const auto& [k, v] : c) d[key(k, cache)] = v;
  return d;
}

nb::dict cpu_times(const probe::CpuTimes& t) {
  nb::dict d;
  for (int i = 0; i < probe::kCpuFieldCount; ++i) d[key(probe::kCpuFields[i])] = t.v[i];
  return d;
}

nb::dict cpu_stat(const probe::CpuStat& s) {
  nb::dict d;
  d[key("total")] = cpu_times(s.total);
  nb::list per;
  for (const auto& t : s.per_cpu) {
    nb::dict c = cpu_times(t);
    c[key("cpu")] = t.cpu;
    per.append(c);
  }
  d[key("per_cpu")] = per;
  d[key("columns")] = s.columns;
  d[key("ctxt")] = s.ctxt;
  d[key("intr")] = s.intr;
  d[key("processes")] = s.processes;
  d[key("procs_running")] = s.procs_running;
  d[key("procs_blocked")] = s.procs_blocked;
  d[key("btime")] = s.btime;
  return d;
}

nb::object psi_line(const std::optional<probe::PsiLine>& l) {
  if (!l) return nb::none();
  nb::dict d;
  d[key("avg10")] = l->avg10;
  d[key("avg60")] = l->avg60;
  d[key("avg300")] = l->avg300;
  d[key("total_us")] = l->total_us;
  return d;
}

nb::dict psi_file(const probe::PsiFile& f) {
  nb::dict d;
  d[key("some")] = psi_line(f.some);
  d[key("full")] = psi_line(f.full);
  return d;
}

nb::dict disk(const probe::DiskStat& s) {
  nb::dict d;
  d[key("name")] = kstr(s.name);
  d[key("major")] = s.major;
  d[key("minor")] = s.minor;
  for (int i = 0; i < probe::kDiskFieldCount; ++i)
    d[key(probe::kDiskFields[i])] = i < s.fields ? nb::cast(s.v[i]) : nb::none();
  d[key("rotational")] = s.rotational ? nb::cast(*s.rotational != 0) : nb::none();
  d[key("nr_requests")] = opt(s.nr_requests);
  d[key("scheduler")] = s.scheduler ? nb::object(kstr(*s.scheduler)) : nb::none();
  return d;
}

nb::list net_devs(const std::vector<probe::NetDev>& devs) {
  nb::list out;
  for (const auto& n : devs) {
    nb::dict d;
    d[key("interface")] = kstr(n.name);
    for (int i = 0; i < probe::kNetDevFieldCount; ++i) d[key(probe::kNetDevFields[i])] = n.v[i];
    out.append(d);
  }
  return out;
}

nb::dict netstat(const probe::NetstatGroups& groups, bool cache = true) {
  nb::dict out;
  for (const auto& [g, kv] : groups) {
    nb::dict d;
    for (const auto& [k, v] : kv) d[key(k, cache)] = v;
    out[key(g, cache)] = d;
  }
  return out;
}

nb::dict pid_stat(const probe::PidStat& s) {
  nb::dict d;
  d[key("pid")] = s.pid;
  d[key("ppid")] = s.ppid;
  d[key("comm")] = kstr(s.comm);
  d[key("state")] = std::string(1, s.state);
  d[key("minflt")] = s.minflt;
  d[key("majflt")] = s.majflt;
  d[key("utime_ticks")] = s.utime;
  d[key("stime_ticks")] = s.stime;
  d[key("threads")] = s.threads;
  d[key("starttime_ticks")] = s.starttime;
  d[key("rss_pages")] = s.rss_pages;
  return d;
}

nb::dict scan_result(const probe::ScanResult& r, long clk_tck) {
  nb::dict out;
  out[key("monotonic_s")] = r.monotonic_s;
  out[key("interval_s")] = opt(r.interval_s);
  const auto& t = r.totals;
  nb::dict totals;
  totals[key("processes")] = t.processes;
  totals[key("threads")] = t.threads;
  totals[key("running")] = t.running;
  totals[key("sleeping")] = t.sleeping;
  totals[key("blocked")] = t.blocked;
  totals[key("stopped")] = t.stopped;
  totals[key("zombies")] = t.zombies;
  totals[key("idle")] = t.idle;
  totals[key("other")] = t.other;
  out[key("totals")] = totals;
  out[key("vanished")] = r.vanished;
  const double tck = static_cast<double>(clk_tck);
  nb::list rows;
  for (const auto& row : r.rows) {
    const auto& s = row.stat;
    nb::dict d;
    d[key("pid")] = s.pid;
    d[key("ppid")] = s.ppid;
    d[key("comm")] = kstr(s.comm);
    d[key("state")] = std::string(1, s.state);
    d[key("uid")] = opt(row.uid);
    d[key("cgroup")] = row.cgroup ? nb::object(kstr(*row.cgroup)) : nb::none();
    d[key("utime_s")] = static_cast<double>(s.utime) / tck;
    d[key("stime_s")] = static_cast<double>(s.stime) / tck;
    d[key("rss_bytes")] = row.rss_bytes;
    d[key("threads")] = s.threads;
    d[key("majflt")] = s.majflt;
    d[key("minflt")] = s.minflt;
    d[key("start_time_ticks")] = s.starttime;
    d[key("read_bytes")] = row.io ? nb::cast(row.io->read_bytes) : nb::none();
    d[key("write_bytes")] = row.io ? nb::cast(row.io->write_bytes) : nb::none();
    d[key("num_fds")] = opt(row.num_fds);
    d[key("smaps")] = row.smaps ? nb::object(counters(*row.smaps)) : nb::none();
    d[key("cpu_percent")] = opt(row.cpu_percent);
    d[key("majflt_per_s")] = opt(row.majflt_per_s);
    d[key("minflt_per_s")] = opt(row.minflt_per_s);
    d[key("read_bytes_per_s")] = opt(row.read_bytes_per_s);
    d[key("write_bytes_per_s")] = opt(row.write_bytes_per_s);
    d[key("rank")] = row.rank;
    rows.append(d);
  }
  out[key("rows")] = rows;
  return out;
}

// --- sockets and taskstats -----------------------------------------------------

std::string addr_text(std::uint16_t family, const std::array<std::uint8_t, 16>& a);

nb::dict tcp_socket(const probe::TcpSocket& t) {
  nb::dict d;
  d[key("family")] = t.family == AF_INET ? "ipv4" : "ipv6";
  d[key("state")] = probe::tcp_state_name(t.state);
  d[key("saddr")] = addr_text(t.family, t.saddr);
  d[key("sport")] = t.sport;
  d[key("daddr")] = addr_text(t.family, t.daddr);
  d[key("dport")] = t.dport;
  d[key("rqueue")] = t.rqueue;
  const bool listen = t.state == 10;
  d[key("wqueue")] = listen ? nb::none() : nb::cast(t.wqueue);
  d[key("backlog")] = listen && t.backlog_known ? nb::cast(t.wqueue) : nb::none();
  d[key("uid")] = t.uid;
  d[key("inode")] = t.inode;
  d[key("retransmits")] = t.retransmits;
  d[key("total_retrans")] = t.has_info ? nb::cast(t.total_retrans) : nb::none();
  d[key("rtt_us")] = t.has_info ? nb::cast(t.rtt_us) : nb::none();
  d[key("lost")] = t.has_info ? nb::cast(t.lost) : nb::none();
  return d;
}

nb::list tcp_sockets(const std::vector<probe::TcpSocket>& v) {
  nb::list out;
  for (const auto& t : v) out.append(tcp_socket(t));
  return out;
}

nb::dict tcp_summary(const probe::TcpSummary& s) {
  nb::dict d;
  d[key("source")] = s.source;
  d[key("total")] = s.total;
  nb::dict states;
  for (int i = 1; i < probe::kTcpStateCount; ++i) states[key(probe::tcp_state_name(i))] = s.states[i];
  d[key("states")] = states;
  d[key("listen_sockets")] = s.listen_sockets;
  d[key("in_rto_backoff")] = s.in_rto_backoff;
  d[key("rqueue_bytes")] = s.rqueue_bytes;
  d[key("wqueue_bytes")] = s.wqueue_bytes;
  d[key("listeners_near_backlog")] = tcp_sockets(s.listeners_near_backlog);
  d[key("top_rqueue")] = tcp_sockets(s.top_rqueue);
  d[key("top_wqueue")] = tcp_sockets(s.top_wqueue);
  d[key("top_retrans")] = tcp_sockets(s.top_retrans);
  d[key("malformed")] = s.malformed;
  return d;
}

nb::object task_delays(const std::optional<probe::TaskDelays>& t) {
  if (!t) return nb::none();
  nb::dict d;
  d[key("pid")] = t->pid;
  d[key("version")] = t->version;
  d[key("cpu_count")] = t->cpu_count;
  d[key("cpu_delay_ns")] = t->cpu_delay_ns;
  d[key("blkio_count")] = t->blkio_count;
  d[key("blkio_delay_ns")] = t->blkio_delay_ns;
  d[key("swapin_count")] = t->swapin_count;
  d[key("swapin_delay_ns")] = t->swapin_delay_ns;
  d[key("freepages_count")] = t->freepages_count;
  d[key("freepages_delay_ns")] = t->freepages_delay_ns;
  d[key("thrashing_count")] = opt(t->thrashing_count);
  d[key("thrashing_delay_ns")] = opt(t->thrashing_delay_ns);
  d[key("compact_count")] = opt(t->compact_count);
  d[key("compact_delay_ns")] = opt(t->compact_delay_ns);
  d[key("cpu_run_real_ns")] = t->cpu_run_real_ns;
  d[key("cpu_run_virtual_ns")] = t->cpu_run_virtual_ns;
  d[key("voluntary_switches")] = t->voluntary_switches;
  d[key("involuntary_switches")] = t->involuntary_switches;
  return d;
}

void check_top(std::size_t top_n, double ratio) {
  if (top_n > 10000) throw std::invalid_argument("top_n must be at most 10000");
  if (!(ratio > 0 && ratio <= 1)) throw std::invalid_argument("backlog_ratio must be in (0, 1]");
}

// --- events ------------------------------------------------------------------

std::string addr_text(std::uint16_t family, const std::array<std::uint8_t, 16>& a) {
  char buf[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(family == 2 ? AF_INET : AF_INET6, a.data(), buf, sizeof buf);
  return buf;
}

nb::dict event_dict(const probe::Event& e) {
  using probe::EventType;
  nb::dict d;
  d[key("type")] = probe::event_type_name(e.type);
  d[key("ts_ns")] = e.ts_ns;
  d[key("cpu")] = e.cpu;
  switch (e.type) {
    case EventType::exec:
      d[key("pid")] = e.pid, d[key("ppid")] = e.ppid, d[key("uid")] = e.uid;
      d[key("comm")] = kstr(e.comm), d[key("filename")] = kstr(e.filename);
      break;
    case EventType::exit:
      d[key("pid")] = e.pid, d[key("ppid")] = e.ppid, d[key("exit_code")] = e.exit_code, d[key("age_ns")] = e.age_ns;
      d[key("comm")] = kstr(e.comm);
      break;
    case EventType::oom_kill:
      d[key("pid")] = e.pid, d[key("uid")] = e.uid, d[key("total_vm_kb")] = e.total_vm_kb, d[key("anon_rss_kb")] = e.anon_rss_kb;
      d[key("file_rss_kb")] = e.file_rss_kb, d[key("shmem_rss_kb")] = e.shmem_rss_kb, d[key("oom_score_adj")] = e.oom_score_adj;
      d[key("comm")] = kstr(e.comm);
      break;
    case EventType::tcp_retransmit:
      d[key("pid")] = e.pid, d[key("family")] = e.family, d[key("sport")] = e.sport, d[key("dport")] = e.dport;
      d[key("state")] = e.state, d[key("saddr")] = addr_text(e.family, e.saddr), d[key("daddr")] = addr_text(e.family, e.daddr);
      break;
    case EventType::runq_latency:
    case EventType::bio_latency:
      d[key("interval_ns")] = e.interval_ns, d[key("dev")] = e.dev, d[key("unit")] = e.unit == 0 ? "ns" : "us";
      d[key("slots")] = nb::cast(e.slots);
      break;
  }
  return d;
}

template <typename T>
T int_value(nb::handle v, const char* key, T lo, T hi) {
  if (!PyLong_Check(v.ptr()) || PyBool_Check(v.ptr()))
    throw probe::EncodeError(std::string("event field '") + key + "' must be an int");
  int overflow = 0;
  long long x = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
  if (overflow > 0 && std::is_same_v<T, std::uint64_t>) {
    unsigned long long u = PyLong_AsUnsignedLongLong(v.ptr());
    if (PyErr_Occurred() != nullptr) {
      PyErr_Clear();
      throw probe::EncodeError(std::string("event field '") + key + "' is out of range");
    }
    return static_cast<T>(u);
  }
  if (overflow != 0 || x < static_cast<long long>(lo) ||
      (x > 0 && static_cast<unsigned long long>(x) > static_cast<unsigned long long>(hi)))
    throw probe::EncodeError(std::string("event field '") + key + "' is out of range");
  return static_cast<T>(x);
}

template <typename T>
T field(const nb::dict& d, const char* key, T lo, T hi) {
  if (!d.contains(key)) throw probe::EncodeError(std::string("event lacks the '") + key + "' field");
  return int_value<T>(d[key], key, lo, hi);
}

std::string bytes_field(const nb::dict& d, const char* key) {
  if (!d.contains(key)) throw probe::EncodeError(std::string("event lacks the '") + key + "' field");
  nb::handle v = d[key];
  if (PyUnicode_Check(v.ptr())) {
    Py_ssize_t n = 0;
    const char* s = PyUnicode_AsUTF8AndSize(v.ptr(), &n);
    if (s == nullptr) {
      PyErr_Clear();
      throw probe::EncodeError(std::string("event field '") + key + "' is not encodable as UTF-8");
    }
    return std::string(s, static_cast<std::size_t>(n));
  }
  if (PyBytes_Check(v.ptr())) return std::string(PyBytes_AS_STRING(v.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(v.ptr())));
  throw probe::EncodeError(std::string("event field '") + key + "' must be str or bytes");
}

std::array<std::uint8_t, 16> addr_field(const nb::dict& d, const char* key, std::uint16_t family) {
  std::string text = bytes_field(d, key);
  std::array<std::uint8_t, 16> a{};
  if (::inet_pton(family == 2 ? AF_INET : AF_INET6, text.c_str(), a.data()) != 1)
    throw probe::EncodeError(std::string("event field '") + key + "' is not an address of family " + std::to_string(family));
  return a;
}

probe::Event event_from(nb::handle h) {
  using probe::EventType;
  if (!PyDict_Check(h.ptr())) throw probe::EncodeError("each event must be a dict");
  nb::dict d = nb::borrow<nb::dict>(h);
  probe::Event e;
  std::string type = bytes_field(d, "type");
  if (!probe::event_type_from_name(type, e.type)) throw probe::EncodeError("unknown event type '" + type + "'");
  constexpr auto u32max = std::numeric_limits<std::uint32_t>::max();
  e.ts_ns = field<std::uint64_t>(d, "ts_ns", 0, std::numeric_limits<std::uint64_t>::max());
  e.cpu = field<std::uint32_t>(d, "cpu", 0, u32max);
  switch (e.type) {
    case EventType::exec:
      e.pid = field<std::uint32_t>(d, "pid", 0, u32max), e.ppid = field<std::uint32_t>(d, "ppid", 0, u32max);
      e.uid = field<std::uint32_t>(d, "uid", 0, u32max);
      e.comm = bytes_field(d, "comm"), e.filename = bytes_field(d, "filename");
      break;
    case EventType::exit:
      e.pid = field<std::uint32_t>(d, "pid", 0, u32max), e.ppid = field<std::uint32_t>(d, "ppid", 0, u32max);
      e.exit_code = field<std::int32_t>(d, "exit_code", INT32_MIN, INT32_MAX);
      e.age_ns = field<std::uint64_t>(d, "age_ns", 0, std::numeric_limits<std::uint64_t>::max());
      e.comm = bytes_field(d, "comm");
      break;
    case EventType::oom_kill: {
      constexpr auto u64max = std::numeric_limits<std::uint64_t>::max();
      e.pid = field<std::uint32_t>(d, "pid", 0, u32max), e.uid = field<std::uint32_t>(d, "uid", 0, u32max);
      e.total_vm_kb = field<std::uint64_t>(d, "total_vm_kb", 0, u64max);
      e.anon_rss_kb = field<std::uint64_t>(d, "anon_rss_kb", 0, u64max);
      e.file_rss_kb = field<std::uint64_t>(d, "file_rss_kb", 0, u64max);
      e.shmem_rss_kb = field<std::uint64_t>(d, "shmem_rss_kb", 0, u64max);
      e.oom_score_adj = field<std::int16_t>(d, "oom_score_adj", -1000, 1000);
      e.comm = bytes_field(d, "comm");
      break;
    }
    case EventType::tcp_retransmit:
      e.pid = field<std::uint32_t>(d, "pid", 0, u32max);
      e.family = field<std::uint16_t>(d, "family", 0, 65535);
      if (e.family != 2 && e.family != 10) throw probe::EncodeError("tcp_retransmit family must be 2 or 10");
      e.sport = field<std::uint16_t>(d, "sport", 0, 65535), e.dport = field<std::uint16_t>(d, "dport", 0, 65535);
      e.state = field<std::uint8_t>(d, "state", 0, 255);
      e.saddr = addr_field(d, "saddr", e.family), e.daddr = addr_field(d, "daddr", e.family);
      break;
    case EventType::runq_latency:
    case EventType::bio_latency: {
      e.interval_ns = field<std::uint64_t>(d, "interval_ns", 0, std::numeric_limits<std::uint64_t>::max());
      e.dev = field<std::uint32_t>(d, "dev", 0, u32max);
      std::string unit = bytes_field(d, "unit");
      if (unit != "ns" && unit != "us") throw probe::EncodeError("histogram unit must be 'ns' or 'us'");
      e.unit = unit == "ns" ? 0 : 1;
      if (!d.contains("slots")) throw probe::EncodeError("event lacks the 'slots' field");
      nb::handle slots = d["slots"];
      if (!PyList_Check(slots.ptr()) && !PyTuple_Check(slots.ptr()))
        throw probe::EncodeError("histogram 'slots' must be a list of ints");
      Py_ssize_t n = PySequence_Size(slots.ptr());
      if (n < 1 || n > static_cast<Py_ssize_t>(probe::kMaxHistSlots))
        throw probe::EncodeError("histogram needs 1 to 64 slots, got " + std::to_string(n));
      for (nb::handle v : slots)
        e.slots.push_back(int_value<std::uint64_t>(v, "slots", 0, std::numeric_limits<std::uint64_t>::max()));
      break;
    }
  }
  return e;
}

nb::dict perf_read(const probe::PerfCounters& p) {
  auto counts = without_gil([&] { return p.read(); });
  nb::list per;
  std::uint64_t total[probe::kPerfEventCount] = {};
  for (const auto& c : counts) {
    nb::dict d;
    d[key("cpu")] = c.cpu;
    for (int i = 0; i < probe::kPerfEventCount; ++i) {
      d[key(probe::kPerfEvents[i])] = c.values[i];
      total[i] += c.values[i];
    }
    d[key("time_enabled_ns")] = c.time_enabled_ns;
    d[key("time_running_ns")] = c.time_running_ns;
    per.append(d);
  }
  nb::dict tot;
  for (int i = 0; i < probe::kPerfEventCount; ++i) tot[key(probe::kPerfEvents[i])] = total[i];
  nb::dict out;
  out[key("per_cpu")] = per;
  out[key("total")] = tot;
  return out;
}

std::string_view view(const nb::bytes& b) { return {b.c_str(), b.size()}; }


}  // namespace

NB_MODULE(probe_core, m) {
  m.doc() = "incidentlab's native probe core: fast /proc, /sys and perf_event_open readers.";
  m.attr("__version__") = PROBE_CORE_VERSION;

  ProbeErrorType = new_error(m, "ProbeError", "Root of every error probe_core raises.", nullptr);
  ReadErrorType = new_error(m, "ReadError", "A host file could not be read (errno, filename).",
                            PyTuple_Pack(2, ProbeErrorType, PyExc_OSError));
  ParseErrorType = new_error(m, "ParseError", "Kernel text did not have the expected shape.",
                             PyTuple_Pack(2, ProbeErrorType, PyExc_ValueError));
  DecodeErrorType = new_error(m, "DecodeError", "An event record is invalid; .offset and .reason say where and why.",
                              PyTuple_Pack(2, ProbeErrorType, PyExc_ValueError));
  EncodeErrorType = new_error(m, "EncodeError", "An event cannot be encoded in the record format.",
                              PyTuple_Pack(2, ProbeErrorType, PyExc_ValueError));
  DecompressErrorType = new_error(m, "DecompressError", "gzip input is corrupt or truncated.",
                                  PyTuple_Pack(2, ProbeErrorType, PyExc_ValueError));
  OutputLimitErrorType = new_error(m, "OutputLimitError", "Decompressed output would pass the caller's limit.",
                                   PyTuple_Pack(1, DecompressErrorType));
  UnavailableErrorType = new_error(m, "UnavailableError", "A kernel facility is not usable on this host.",
                                   PyTuple_Pack(1, ProbeErrorType));

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const probe::ReadError& e) {
      raise_with_attrs(ReadErrorType,
                       Py_BuildValue("(isN)", e.err(), probe::errno_text(e.err()).c_str(),
                                     PyUnicode_DecodeFSDefault(e.path().c_str())),
                       {});
    } catch (const probe::DecodeError& e) {
      raise_with_attrs(DecodeErrorType, Py_BuildValue("(s)", e.what()),
                       {{"offset", PyLong_FromSize_t(e.offset())}, {"reason", PyUnicode_FromString(e.reason().c_str())}});
    } catch (const probe::ParseError& e) {
      PyErr_SetString(ParseErrorType, e.what());
    } catch (const probe::EncodeError& e) {
      PyErr_SetString(EncodeErrorType, e.what());
    } catch (const probe::OutputLimitError& e) {
      PyErr_SetString(OutputLimitErrorType, e.what());
    } catch (const probe::DecompressError& e) {
      PyErr_SetString(DecompressErrorType, e.what());
    } catch (const probe::UnavailableError& e) {
      PyErr_SetString(UnavailableErrorType, e.what());
    } catch (const probe::Error& e) {
      PyErr_SetString(ProbeErrorType, e.what());
    }
  });

  // --- host readers -------------------------------------------------------------
  m.def("sysinfo_host", [](const std::string& root) {
    auto h = without_gil([&] { return probe::sysinfo_host(root); });
    nb::dict d;
    d[key("hostname")] = kstr(h.hostname);
    d[key("kernel_release")] = kstr(h.kernel_release);
    d[key("machine_id")] = h.machine_id ? nb::object(kstr(*h.machine_id)) : nb::none();
    d[key("boot_id")] = kstr(h.boot_id);
    d[key("uptime_s")] = h.uptime_s;
    d[key("idle_s")] = h.idle_s;
    d[key("load1")] = h.load.load1;
    d[key("load5")] = h.load.load5;
    d[key("load15")] = h.load.load15;
    d[key("runnable")] = h.load.runnable;
    d[key("tasks")] = h.load.total;
    d[key("last_pid")] = h.load.last_pid;
    d[key("cpu_count")] = h.cpu_count;
    d[key("page_size")] = h.page_size;
    d[key("clock_ticks")] = h.clock_ticks;
    return d;
  }, "root"_a = "/", "Hostname, kernel release, machine and boot ids, uptime, loadavg, CPU count, page size, clock ticks.");

  m.def("read_cpu", [](const std::string& root) {
    auto s = without_gil([&] { return probe::read_cpu(root); });
    return cpu_stat(s);
  }, "root"_a = "/", "/proc/stat: total and per-CPU jiffies, ctxt, intr, forks, procs_running, procs_blocked, btime.");
  m.def("parse_proc_stat", [](const std::string& text) { return cpu_stat(probe::parse_proc_stat(text)); }, "text"_a);

  m.def("read_meminfo", [](const std::string& root) {
    auto c = without_gil([&] { return probe::read_meminfo(root); });
    return counters(c);
  }, "root"_a = "/", "/proc/meminfo in bytes (HugePages_* counts stay counts).");
  m.def("parse_meminfo", [](const std::string& text) { return counters(probe::parse_meminfo(text), false); }, "text"_a);

  m.def("read_vmstat", [](const std::string& root) {
    auto c = without_gil([&] { return probe::read_vmstat(root); });
    return counters(c);
  }, "root"_a = "/", "Every counter of /proc/vmstat.");
  m.def("parse_vmstat", [](const std::string& text) { return counters(probe::parse_vmstat(text), false); }, "text"_a);

  m.def("read_pressure", [](const std::string& root) {
    auto p = without_gil([&] { return probe::read_pressure(root); });
    nb::dict d;
    d[key("available")] = p.available;
    d[key("reason")] = p.available ? nb::none() : nb::object(kstr(p.reason));
    nb::dict reasons;
    for (const auto& r : p.resources) {
      d[r.name.c_str()] = r.value ? nb::object(psi_file(*r.value)) : nb::none();
      if (!r.value) reasons[r.name.c_str()] = kstr(r.reason);
    }
    d[key("absent")] = reasons;
    return d;
  }, "root"_a = "/", "PSI for cpu, memory, io (and irq when present); an absent resource is None, never zeros.");
  m.def("parse_pressure", [](const std::string& text) { return psi_file(probe::parse_pressure(text)); }, "text"_a);

  m.def("read_diskstats", [](const std::string& root, bool queue_attrs) {
    auto s = without_gil([&] { return probe::read_diskstats(root, queue_attrs); });
    nb::dict d;
    d[key("source")] = s.source;
    d[key("reason")] = s.reason.empty() ? nb::none() : nb::object(kstr(s.reason));
    nb::list devs;
    for (const auto& dev : s.devices) devs.append(disk(dev));
    d[key("devices")] = devs;
    return d;
  }, "root"_a = "/", "queue_attrs"_a = true,
  "Block device counters from /sys/block/*/stat (fallback /proc/diskstats); queue attributes unless queue_attrs=False.");
  m.def("parse_diskstats", [](const std::string& text) {
    nb::list out;
    for (const auto& dev : probe::parse_diskstats(text)) out.append(disk(dev));
    return out;
  }, "text"_a);

  m.def("read_net_dev", [](const std::string& root) {
    auto devs = without_gil([&] { return probe::read_net_dev(root); });
    return net_devs(devs);
  }, "root"_a = "/", "Per-interface counters from /proc/net/dev.");
  m.def("parse_net_dev", [](const std::string& text) { return net_devs(probe::parse_net_dev(text)); }, "text"_a);

  m.def("read_netstat", [](const std::string& root) {
    auto g = without_gil([&] { return probe::read_netstat(root); });
    return netstat(g);
  }, "root"_a = "/", "/proc/net/snmp and /proc/net/netstat as group -> counter -> value.");
  m.def("parse_netstat", [](const std::string& text) { return netstat(probe::parse_netstat(text), false); }, "text"_a);

  m.def("parse_pid_stat", [](const std::string& text) { return pid_stat(probe::parse_pid_stat(text)); }, "text"_a);
  m.def("parse_pid_cgroup", [](const std::string& text) {
    auto entries = probe::parse_pid_cgroup(text);
    nb::list out;
    for (const auto& e : entries) {
      nb::dict d;
      d[key("hierarchy")] = kstr(e.hierarchy);
      d[key("controllers")] = kstr(e.controllers);
      d[key("path")] = kstr(e.path);
      out.append(d);
    }
    nb::dict res;
    res[key("entries")] = out;
    res[key("primary")] = kstr(probe::primary_cgroup(entries));
    return res;
  }, "text"_a);
  m.def("parse_nofile_limit", [](const std::string& text) { return opt(probe::parse_nofile_limit(text)); }, "text"_a);
  m.def("parse_smaps_rollup", [](const std::string& text) { return counters(probe::parse_smaps_rollup(text), false); }, "text"_a);

  // --- processes ------------------------------------------------------------------
  nb::class_<probe::ProcessScanner>(m, "ProcessScanner",
                                    "One /proc walk per scan(); keeps the previous pass for rates.")
      .def(nb::init<std::string, double, std::size_t>(), "root"_a = "/", "cold_ttl_s"_a = 10.0, "keep_fds"_a = 0)
      .def_prop_ro("open_fds", &probe::ProcessScanner::open_fds)
      .def_prop_ro("root", &probe::ProcessScanner::root)
      .def_prop_ro("cold_ttl_s", &probe::ProcessScanner::cold_ttl_s)
      .def("scan", [](probe::ProcessScanner& s, const std::string& key, std::size_t top_n, bool enrich) {
        probe::SortKey k;
        try {
          k = probe::parse_sort_key(key);
        } catch (const probe::Error& e) {
          throw std::invalid_argument(e.what());
        }
        if (top_n > 100000) throw std::invalid_argument("top_n must be at most 100000");
        auto r = without_gil([&] { return s.scan(k, top_n, enrich); });
        return scan_result(r, ::sysconf(_SC_CLK_TCK));
      }, "key"_a = "cpu", "top_n"_a = 20, "enrich"_a = true,
      "Walk /proc once; return totals and the top_n rows by key (cpu, rss, io, fds, majflt).")
      .def("fd_holders", [](probe::ProcessScanner& s, std::size_t top_n) {
        if (top_n > 100000) throw std::invalid_argument("top_n must be at most 100000");
        auto holders = without_gil([&] { return s.fd_holders(top_n); });
        nb::list out;
        for (const auto& h : holders) {
          nb::dict d;
          d[key("pid")] = h.pid;
          d[key("comm")] = kstr(h.comm);
          d[key("num_fds")] = h.num_fds;
          d[key("fd_limit")] = opt(h.fd_limit);
          out.append(d);
        }
        return out;
      }, "top_n"_a = 5,
      "The top_n processes by open files, with their soft RLIMIT_NOFILE (None: unlimited or unreadable).");

  // --- perf -----------------------------------------------------------------------
  nb::class_<probe::PerfCounters>(m, "PerfCounters",
                                  "System-wide per-CPU software counters through perf_event_open.")
      .def(nb::init<const std::string&>(), "root"_a = "/")
      .def("available", &probe::PerfCounters::available)
      .def("reason", &probe::PerfCounters::reason, "Why the counters are unavailable; empty when available.")
      .def("cpus", &probe::PerfCounters::cpus)
      .def("read", &perf_read, "Cumulative counts since open, per CPU and in total.");
  m.attr("PERF_EVENTS") = nb::make_tuple(probe::kPerfEvents[0], probe::kPerfEvents[1], probe::kPerfEvents[2],
                                         probe::kPerfEvents[3], probe::kPerfEvents[4]);

  // --- BPF maps and perf output (programs a loader process compiled) ---------------------
  m.def("bpf_map_info", [](int fd) {
    auto i = without_gil([&] { return probe::bpf_map_info(fd); });
    nb::dict d;
    d["type"] = i.type;
    d["key_size"] = i.key_size;
    d["value_size"] = i.value_size;
    d["max_entries"] = i.max_entries;
    d["name"] = i.name;
    return d;
  }, "fd"_a, "A BPF map's type, key and value sizes, max_entries and name (UnavailableError: not a map).");
  m.def("bpf_map_items", [](int fd) {
    auto items = without_gil([&] { return probe::bpf_map_items(fd); });
    nb::list out;
    for (const auto& [k, v] : items) out.append(nb::make_tuple(nb::bytes(k.data(), k.size()), nb::bytes(v.data(), v.size())));
    return out;
  }, "fd"_a, "Every (key, value) of a hash or array map, at most max_entries; per-CPU maps are refused.");
  m.def("parse_perf_ring", [](const nb::bytes& ring, std::uint64_t tail, std::uint64_t head, std::size_t max_samples) {
    std::uint64_t new_tail = tail;
    auto d = probe::parse_perf_ring(view(ring), tail, head, max_samples, &new_tail);
    nb::list samples;
    for (const auto& s : d.samples) samples.append(nb::bytes(s.data(), s.size()));
    nb::dict out;
    out["samples"] = samples;
    out["lost"] = d.lost;
    out["corrupt"] = d.corrupt;
    out["tail"] = new_tail;
    return out;
  }, "ring"_a, "tail"_a, "head"_a, "max_samples"_a = 1u << 20,
  "The RAW samples and lost counts of a perf ring's bytes between tail and head (pure; for tests).");
  nb::class_<probe::BpfPerfBuffer>(m, "BpfPerfBuffer",
                                   "Per-CPU bpf-output perf rings put in a BPF_MAP_TYPE_PERF_EVENT_ARRAY.")
      .def(nb::init<int, const std::vector<int>&, int>(), "map_fd"_a, "cpus"_a, "page_cnt"_a)
      .def("poll", [](probe::BpfPerfBuffer& b, std::size_t max_samples) {
        auto got = without_gil([&] { return b.poll(max_samples); });
        nb::list out;
        for (const auto& [cpu, s] : got) out.append(nb::make_tuple(cpu, nb::bytes(s.data(), s.size())));
        return out;
      }, "max_samples"_a = 1u << 20, "(cpu, sample) drained from every ring, without blocking.")
      .def("lost", &probe::BpfPerfBuffer::lost, "Samples the kernel dropped for want of room, since open.")
      .def("corrupt", &probe::BpfPerfBuffer::corrupt, "Records that could not be what the kernel writes.")
      .def("close", &probe::BpfPerfBuffer::close);

  // --- sockets, taskstats, capabilities --------------------------------------------------
  m.def("sock_diag_tcp", [](std::size_t top_n, double backlog_ratio, bool per_family) {
    check_top(top_n, backlog_ratio);
    return tcp_summary(without_gil([&] { return probe::sock_diag_tcp(top_n, backlog_ratio, per_family); }));
  }, "top_n"_a = 10, "backlog_ratio"_a = 0.8, "per_family"_a = false,
  "TCP sockets of this network namespace through NETLINK_SOCK_DIAG, summarized.");
  m.def("read_proc_net_tcp", [](const std::string& root, std::size_t top_n, double backlog_ratio) {
    check_top(top_n, backlog_ratio);
    return tcp_summary(without_gil([&] { return probe::read_proc_net_tcp(root, top_n, backlog_ratio); }));
  }, "root"_a = "/", "top_n"_a = 10, "backlog_ratio"_a = 0.8,
  "The same summary from /proc/net/tcp and tcp6 (no backlog, no tcp_info).");
  m.def("parse_proc_net_tcp", [](const std::string& text, int family, std::size_t top_n, double backlog_ratio) {
    check_top(top_n, backlog_ratio);
    if (family != 4 && family != 6) throw std::invalid_argument("family must be 4 or 6");
    probe::TcpSummarizer sum(top_n, backlog_ratio);
    probe::parse_proc_net_tcp(text, family == 4 ? AF_INET : AF_INET6, sum);
    return tcp_summary(sum.finish("proc"));
  }, "text"_a, "family"_a = 4, "top_n"_a = 10, "backlog_ratio"_a = 0.8);

  nb::class_<probe::Taskstats>(m, "Taskstats", "Per-process delay accounting over generic netlink (CAP_NET_ADMIN).")
      .def(nb::init<>())
      .def_prop_ro("family_id", &probe::Taskstats::family_id)
      .def("tgid", [](probe::Taskstats& t, std::uint32_t tgid) {
        return task_delays(without_gil([&] { return t.tgid(tgid); }));
      }, "tgid"_a, "Delays of a whole thread group; None when the process is gone.");

  m.def("capget", [] {
    auto c = probe::capget_self();
    nb::dict d;
    d[key("effective")] = c.effective;
    d[key("permitted")] = c.permitted;
    d[key("inheritable")] = c.inheritable;
    return d;
  }, "This process's capability sets as 64-bit masks.");

  // --- crc32c -----------------------------------------------------------------------
  m.def("crc32c", [](const nb::bytes& data, std::uint32_t value) {
    return probe::crc32c(data.c_str(), data.size(), value);
  }, "data"_a, "value"_a = 0, "CRC-32C of data, continuing from value (as zlib.crc32 does).");
  m.def("crc32c_hardware", &probe::crc32c_hardware, "Whether crc32c uses the CPU's SSE4.2 instruction.");
  m.def("_crc32c_software", [](const nb::bytes& data, std::uint32_t value) {
    return probe::crc32c_software(data.c_str(), data.size(), value);
  }, "data"_a, "value"_a = 0);

  // --- robust statistics ----------------------------------------------------------------
  m.def("median_mad", [](nb::handle values) -> nb::object {
    Py_buffer buf;
    if (PyObject_GetBuffer(values.ptr(), &buf, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) throw nb::python_error();
    struct Release {
      Py_buffer* b;
      ~Release() { PyBuffer_Release(b); }
    } release{&buf};
    if (buf.itemsize != sizeof(double) || buf.format == nullptr || std::strcmp(buf.format, "d") != 0)
      throw nb::type_error("median_mad takes a buffer of doubles (array('d'), memoryview of one)");
    const auto r = probe::median_mad(static_cast<const double*>(buf.buf), static_cast<std::size_t>(buf.len) / sizeof(double));
    if (r.n == 0) return nb::none();
    return nb::make_tuple(r.median, r.mad, r.n);
  }, "values"_a, "(median, median absolute deviation, count) of the values that are not NaN; None without any.");

  // --- gzip -------------------------------------------------------------------------
  m.def("gzip_compress", [](const nb::bytes& data, int level) {
    if (level < -1 || level > 9) throw std::invalid_argument("level must be -1 (default) or 0..9");
    auto out = without_gil([&] { return probe::gzip_compress(view(data), level); });
    return nb::bytes(out.data(), out.size());
  }, "data"_a, "level"_a = 6);
  m.def("gzip_decompress", [](const nb::bytes& data, std::size_t max_output) {
    auto out = without_gil([&] { return probe::gzip_decompress(view(data), max_output); });
    return nb::bytes(out.data(), out.size());
  }, "data"_a, "max_output"_a, "Decompress gzip; raises OutputLimitError past max_output bytes.");

  // --- json ---------------------------------------------------------------------------
  m.def("json_check", [](const nb::bytes& data, std::size_t max_depth, std::size_t max_nodes) {
    const std::string_view text = view(data);  // data's reference keeps the buffer alive
    auto r = without_gil([&] { return probe::json_check(text, max_depth, max_nodes); });
    nb::dict d;
    d[key("ok")] = r.ok;
    d[key("nodes")] = r.nodes;
    d[key("depth")] = r.depth;
    d[key("error")] = r.ok ? nb::none() : nb::cast(r.error);
    d[key("path")] = r.ok ? nb::none() : nb::object(kstr(r.path));
    d[key("offset")] = r.ok ? nb::none() : nb::cast(r.offset);
    return d;
  }, "data"_a, "max_depth"_a, "max_nodes"_a,
  "Strict RFC 8259 check of one JSON document without the GIL; the first problem's reason, path and offset.");

  // --- events -----------------------------------------------------------------------
  m.def("encode_events", [](const nb::list& events) {
    std::vector<probe::Event> evs;
    evs.reserve(events.size());
    for (nb::handle h : events) evs.push_back(event_from(h));
    std::string out = probe::encode_events(evs);
    return nb::bytes(out.data(), out.size());
  }, "events"_a);
  m.def("decode_events", [](const nb::bytes& data) {
    auto evs = without_gil([&] { return probe::decode_events(view(data)); });
    nb::list out;
    for (const auto& e : evs) out.append(event_dict(e));
    return out;
  }, "data"_a);
  m.attr("EVENT_FORMAT_VERSION") = probe::kEventVersion;
  m.attr("EVENT_HEADER_SIZE") = probe::kEventHeaderSize;
  m.attr("EVENT_MAX_RECORD") = probe::kEventMaxRecord;
  m.attr("EVENT_TYPES") = nb::make_tuple("exec", "exit", "oom_kill", "tcp_retransmit", "runq_latency", "bio_latency");
}
