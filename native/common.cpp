#include "common.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>

namespace probe {

namespace {

std::string printable(std::string_view s, std::size_t cap = 120) {
  std::string out;
  for (char c : s.substr(0, cap)) {
    unsigned char u = static_cast<unsigned char>(c);
    out.push_back(u >= 0x20 && u < 0x7f ? c : '?');
  }
  if (s.size() > cap) out += "...";
  return out;
}

}  // namespace

ReadError::ReadError(int err, std::string path)
    : Error(path + ": " + errno_text(err)), err_(err), path_(std::move(path)) {}

DecodeError::DecodeError(std::string reason, std::size_t offset, const std::string& detail)
    : Error("event record invalid at byte offset " + std::to_string(offset) + " (" + reason +
            "): " + detail),
      reason_(std::move(reason)),
      offset_(offset) {}

std::string errno_text(int err) {
  char buf[128];
  // GNU strerror_r returns the message pointer, which may not be buf.
  const char* msg = strerror_r(err, buf, sizeof buf);
  return msg;
}

std::string join_root(std::string_view root, std::string_view path) {
  std::string out(root);
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  if (out == "/") out.clear();
  if (path.empty() || path.front() != '/') out.push_back('/');
  out.append(path);
  return out;
}

bool try_read_file(const std::string& path, std::string& out, int* err) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *err = errno;
    return false;
  }
  bool ok = read_at_all(fd, nullptr, out);
  if (!ok) *err = errno;
  ::close(fd);
  return ok;
}

std::string read_file(const std::string& path) {
  std::string out;
  int err = 0;
  if (!try_read_file(path, out, &err)) throw ReadError(err, path);
  return out;
}

long read_at(int dirfd, const char* name, char* buf, std::size_t cap) {
  int fd = ::openat(dirfd, name, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  std::size_t used = 0;
  while (used < cap) {
    ssize_t n = ::read(fd, buf + used, cap - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      int saved = errno;
      ::close(fd);
      errno = saved;
      return -1;
    }
    if (n == 0) break;
    used += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return static_cast<long>(used);
}

// With name == nullptr, dirfd is the open file itself.
bool read_at_all(int dirfd, const char* name, std::string& out) {
  int fd = dirfd;
  if (name != nullptr) {
    fd = ::openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
  }
  out.clear();
  // procfs files report size 0, so grow until read() says end of file.
  std::size_t cap = 4096;
  out.resize(cap);
  std::size_t used = 0;
  bool ok = true;
  for (;;) {
    if (used == cap) {
      // 64 MiB bounds any single pseudo-file we read (/proc/net/tcp on huge hosts).
      if (cap >= (64u << 20)) {
        errno = EFBIG;
        ok = false;
        break;
      }
      cap *= 2;
      out.resize(cap);
    }
    ssize_t n = ::read(fd, out.data() + used, cap - used);
    if (n < 0) {
      if (errno == EINTR) continue;
      ok = false;
      break;
    }
    if (n == 0) break;
    used += static_cast<std::size_t>(n);
  }
  int saved = errno;
  if (name != nullptr) ::close(fd);
  errno = saved;
  out.resize(ok ? used : 0);
  return ok;
}

std::vector<std::string_view> split_ws(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
    std::size_t j = i;
    while (j < s.size() && !(s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r')) ++j;
    if (j > i) out.push_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

bool LineReader::next(std::string_view& line) {
  if (rest_.empty()) return false;
  std::size_t nl = rest_.find('\n');
  if (nl == std::string_view::npos) {
    line = rest_;
    rest_ = {};
  } else {
    line = rest_.substr(0, nl);
    rest_.remove_prefix(nl + 1);
  }
  return true;
}

bool parse_u64(std::string_view s, std::uint64_t& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

bool parse_i64(std::string_view s, std::int64_t& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

bool parse_double(std::string_view s, double& out) {
  if (s.empty() || s.size() > 64) return false;
  char buf[65];
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  char* end = nullptr;
  errno = 0;
  out = std::strtod(buf, &end);
  return errno == 0 && end == buf + s.size();
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

void parse_fail(std::string_view what, std::string_view line) {
  throw ParseError("malformed " + std::string(what) + ": '" + printable(line) + "'");
}

}  // namespace probe
