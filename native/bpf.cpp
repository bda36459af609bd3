#include "bpf.hpp"

#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <unordered_set>

#include "common.hpp"

namespace probe {

namespace {

long sys_bpf(int cmd, bpf_attr* attr) {
  return ::syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

[[noreturn]] void fail(const std::string& what, int err) {
  throw UnavailableError(what + ": " + errno_text(err) + " (errno " + std::to_string(err) + ")");
}

bool per_cpu(std::uint32_t type) {
  return type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_ARRAY ||
         type == BPF_MAP_TYPE_LRU_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE;
}

std::uint32_t le32(const unsigned char* p) {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}

std::uint64_t le64(const unsigned char* p) {
  return static_cast<std::uint64_t>(le32(p)) | static_cast<std::uint64_t>(le32(p + 4)) << 32;
}

}  // namespace

BpfMapInfo bpf_map_info(int fd) {
  ::bpf_map_info info;
  std::memset(&info, 0, sizeof info);
  bpf_attr attr;
  std::memset(&attr, 0, sizeof attr);
  attr.info.bpf_fd = static_cast<std::uint32_t>(fd);
  attr.info.info_len = sizeof info;
  attr.info.info = reinterpret_cast<std::uint64_t>(&info);
  if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) != 0) fail("BPF_OBJ_GET_INFO_BY_FD on fd " + std::to_string(fd), errno);
  BpfMapInfo out;
  out.type = info.type;
  out.key_size = info.key_size;
  out.value_size = info.value_size;
  out.max_entries = info.max_entries;
  out.name.assign(info.name, strnlen(info.name, sizeof info.name));
  return out;
}

std::vector<std::pair<std::string, std::string>> bpf_map_items(int fd) {
  const BpfMapInfo info = bpf_map_info(fd);
  if (per_cpu(info.type)) throw UnavailableError("map " + info.name + " is per-CPU: not read here");
  std::vector<std::pair<std::string, std::string>> out;
  std::unordered_set<std::string> seen;
  std::string key(info.key_size, '\0'), next(info.key_size, '\0'), value(info.value_size, '\0');
  bool first = true;
  const std::uint64_t max_steps = 2ull * info.max_entries + 1;
  for (std::uint64_t step = 0; step < max_steps && out.size() < info.max_entries; ++step) {
    bpf_attr attr;
    std::memset(&attr, 0, sizeof attr);
    attr.map_fd = static_cast<std::uint32_t>(fd);
    attr.key = first ? 0 : reinterpret_cast<std::uint64_t>(key.data());
    attr.next_key = reinterpret_cast<std::uint64_t>(next.data());
    if (sys_bpf(BPF_MAP_GET_NEXT_KEY, &attr) != 0) {
      if (errno == ENOENT) break;  // the end
      fail("BPF_MAP_GET_NEXT_KEY on " + info.name, errno);
    }
    first = false;
    key = next;
    std::memset(&attr, 0, sizeof attr);
    attr.map_fd = static_cast<std::uint32_t>(fd);
    attr.key = reinterpret_cast<std::uint64_t>(key.data());
    attr.value = reinterpret_cast<std::uint64_t>(value.data());
    if (sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr) != 0) {
      if (errno == ENOENT) continue;  // deleted under the walk
      fail("BPF_MAP_LOOKUP_ELEM on " + info.name, errno);
    }
    if (seen.insert(key).second) out.emplace_back(key, value);
  }
  return out;
}

PerfDrain parse_perf_ring(std::string_view ring, std::uint64_t tail, std::uint64_t head,
                          std::size_t max_samples, std::uint64_t* new_tail) {
  PerfDrain d;
  const std::size_t size = ring.size();
  *new_tail = tail;
  if (size == 0 || (size & (size - 1)) != 0 || head < tail || head - tail > size) {
    if (head != tail) ++d.corrupt;
    *new_tail = head;
    return d;
  }
  auto copy = [&](std::uint64_t pos, std::size_t n, unsigned char* dst) {
    std::size_t off = pos & (size - 1);
    std::size_t first = std::min(n, size - off);
    std::memcpy(dst, ring.data() + off, first);
    std::memcpy(dst + first, ring.data(), n - first);
  };
  std::string record;
  while (tail < head && d.samples.size() < max_samples) {
    unsigned char hdr[8];
    if (head - tail < sizeof hdr) {
      ++d.corrupt;
      tail = head;
      break;
    }
    copy(tail, sizeof hdr, hdr);
    const std::uint32_t type = le32(hdr);
    const std::size_t rsize = static_cast<std::size_t>(hdr[6]) | static_cast<std::size_t>(hdr[7]) << 8;
    if (rsize < sizeof hdr || rsize > head - tail) {
      ++d.corrupt;  // not a record the kernel wrote: nothing after it can be trusted
      tail = head;
      break;
    }
    record.resize(rsize);
    copy(tail, rsize, reinterpret_cast<unsigned char*>(record.data()));
    const auto* r = reinterpret_cast<const unsigned char*>(record.data());
    if (type == PERF_RECORD_SAMPLE) {
      // PERF_SAMPLE_RAW: u32 size, then the bytes (padded to 8 with the size field).
      if (rsize < 12 || le32(r + 8) > rsize - 12) {
        ++d.corrupt;
      } else {
        d.samples.emplace_back(record.data() + 12, le32(r + 8));
      }
    } else if (type == PERF_RECORD_LOST) {
      if (rsize >= 24) d.lost += le64(r + 16);  // u64 id, u64 lost
      else ++d.corrupt;
    }  // other record types carry nothing for us
    tail += rsize;
  }
  *new_tail = tail;
  return d;
}

BpfPerfBuffer::BpfPerfBuffer(int map_fd, const std::vector<int>& cpus, int page_cnt) {
  if (page_cnt <= 0 || (page_cnt & (page_cnt - 1)) != 0)
    throw UnavailableError("page_cnt must be a power of two, not " + std::to_string(page_cnt));
  page_size_ = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  data_size_ = page_size_ * static_cast<std::size_t>(page_cnt);
  for (int cpu : cpus) {
    perf_event_attr attr;
    std::memset(&attr, 0, sizeof attr);
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_BPF_OUTPUT;
    attr.sample_type = PERF_SAMPLE_RAW;
    attr.sample_period = 1;
    attr.wakeup_events = 1;
    Ring ring;
    ring.cpu = cpu;
    ring.fd = static_cast<int>(::syscall(SYS_perf_event_open, &attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC));
    if (ring.fd < 0) {
      int e = errno;
      close();
      fail("perf_event_open(bpf-output, cpu " + std::to_string(cpu) + ")", e);
    }
    ring.base = ::mmap(nullptr, page_size_ + data_size_, PROT_READ | PROT_WRITE, MAP_SHARED, ring.fd, 0);
    if (ring.base == MAP_FAILED) {
      int e = errno;
      ::close(ring.fd);
      close();
      fail("mmap of the perf ring on cpu " + std::to_string(cpu), e);
    }
    rings_.push_back(ring);
    bpf_attr battr;
    std::memset(&battr, 0, sizeof battr);
    std::uint32_t key = static_cast<std::uint32_t>(cpu), value = static_cast<std::uint32_t>(ring.fd);
    battr.map_fd = static_cast<std::uint32_t>(map_fd);
    battr.key = reinterpret_cast<std::uint64_t>(&key);
    battr.value = reinterpret_cast<std::uint64_t>(&value);
    battr.flags = BPF_ANY;
    if (sys_bpf(BPF_MAP_UPDATE_ELEM, &battr) != 0) {
      int e = errno;
      close();
      fail("BPF_MAP_UPDATE_ELEM of the perf ring for cpu " + std::to_string(cpu), e);
    }
    if (::ioctl(ring.fd, PERF_EVENT_IOC_ENABLE, 0) != 0) {
      int e = errno;
      close();
      fail("PERF_EVENT_IOC_ENABLE on cpu " + std::to_string(cpu), e);
    }
  }
}

BpfPerfBuffer::~BpfPerfBuffer() { close(); }

std::uint64_t BpfPerfBuffer::lost() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lost_;
}

std::uint64_t BpfPerfBuffer::corrupt() const {
  std::lock_guard<std::mutex> lock(mu_);
  return corrupt_;
}

void BpfPerfBuffer::close() {
  std::lock_guard<std::mutex> lock(mu_);
  close_locked();
}

void BpfPerfBuffer::close_locked() {
  for (auto& r : rings_) {
    if (r.base != nullptr) ::munmap(r.base, page_size_ + data_size_);
    if (r.fd >= 0) ::close(r.fd);
  }
  rings_.clear();
}

std::vector<std::pair<int, std::string>> BpfPerfBuffer::poll(std::size_t max_samples) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<int, std::string>> out;
  const std::size_t n = rings_.size();
  for (std::size_t i = 0; i < n; ++i) {
    if (out.size() >= max_samples) break;
    auto& r = rings_[(next_ + i) % n];
    auto* meta = static_cast<perf_event_mmap_page*>(r.base);
    const std::uint64_t head = __atomic_load_n(&meta->data_head, __ATOMIC_ACQUIRE);
    const std::uint64_t tail = meta->data_tail;
    std::string_view data(static_cast<const char*>(r.base) + page_size_, data_size_);
    std::uint64_t new_tail = tail;
    PerfDrain d = parse_perf_ring(data, tail, head, max_samples - out.size(), &new_tail);
    __atomic_store_n(&meta->data_tail, new_tail, __ATOMIC_RELEASE);
    lost_ += d.lost;
    corrupt_ += d.corrupt;
    for (auto& s : d.samples) out.emplace_back(r.cpu, std::move(s));
  }
  if (n != 0) next_ = (next_ + 1) % n;
  return out;
}

}  // namespace probe
