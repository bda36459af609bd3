// Shared helpers for the probe core: errors, file reads under a root, and
// allocation-free text scanning. No Python in here: bindings.cpp converts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace probe {

// Error tree (mirrored one to one in Python by bindings.cpp):
//   Error
//   +-- ReadError        a host file could not be read (errno, path)
//   +-- ParseError       kernel text did not have the expected shape
//   +-- DecodeError      a binary event record is invalid (byte offset, reason)
//   +-- EncodeError      an event given to encode_events is invalid
//   +-- DecompressError  gzip input is corrupt
//   |   +-- OutputLimitError  decompressed size would pass the caller's cap
//   +-- UnavailableError a kernel facility is not usable here (perf counters)
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ReadError : public Error {
 public:
  ReadError(int err, std::string path);
  int err() const noexcept { return err_; }
  const std::string& path() const noexcept { return path_; }

 private:
  int err_;
  std::string path_;
};

class ParseError : public Error {
 public:
  using Error::Error;
};

class DecodeError : public Error {
 public:
  DecodeError(std::string reason, std::size_t offset, const std::string& detail);
  const std::string& reason() const noexcept { return reason_; }
  std::size_t offset() const noexcept { return offset_; }

 private:
  std::string reason_;
  std::size_t offset_;
};

class EncodeError : public Error {
 public:
  using Error::Error;
};

class DecompressError : public Error {
 public:
  using Error::Error;
};

class OutputLimitError : public DecompressError {
 public:
  using DecompressError::DecompressError;
};

class UnavailableError : public Error {
 public:
  using Error::Error;
};

// Joins a configured root ("/" or a fixture tree) with an absolute host path.
std::string join_root(std::string_view root, std::string_view path);

// Reads a whole (small, pseudo) file. Throws ReadError.
std::string read_file(const std::string& path);

// Like read_file, but returns false with errno in *err instead of throwing.
bool try_read_file(const std::string& path, std::string& out, int* err);

// Reads a file relative to an open directory fd into buf; returns bytes read
// or -1 with errno set. Used on the process-scan hot path (no path building).
long read_at(int dirfd, const char* name, char* buf, std::size_t cap);

// Reads into a growable buffer relative to dirfd. Returns false, errno set.
bool read_at_all(int dirfd, const char* name, std::string& out);

std::string errno_text(int err);

// --- text scanning -----------------------------------------------------------

// Splits on ASCII whitespace.
std::vector<std::string_view> split_ws(std::string_view s);

// Iterates lines without allocating.
class LineReader {
 public:
  explicit LineReader(std::string_view text) : rest_(text) {}
  bool next(std::string_view& line);

 private:
  std::string_view rest_;
};

bool parse_u64(std::string_view s, std::uint64_t& out);
bool parse_i64(std::string_view s, std::int64_t& out);
bool parse_double(std::string_view s, double& out);

std::string_view trim(std::string_view s);

// Throws ParseError naming what was being parsed and the offending line.
[[noreturn]] void parse_fail(std::string_view what, std::string_view line);

}  // namespace probe
