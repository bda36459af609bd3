#include "json_check.hpp"

#include <algorithm>
#include <bit>
#include <charconv>
#include <cstring>
#include <system_error>
#include <utility>
#include <vector>

namespace probe {

namespace {

using Byte = unsigned char;

// Keys in paths are cut here so that an error path stays readable whatever the input.
constexpr std::size_t kPathKeyBytes = 64;
// Only the stack's first frames are reserved up front: typical batches nest a handful of
// levels, and a deeper document grows the vector geometrically, bounded by max_depth.
constexpr std::size_t kReservedFrames = 64;

constexpr bool is_digit(Byte c) { return c >= '0' && c <= '9'; }
constexpr bool is_alpha(Byte c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
constexpr bool is_ws(Byte c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

int hex_digit(Byte c) {
  if (is_digit(c)) return c - '0';
  const int l = c | 0x20;
  return l >= 'a' && l <= 'f' ? l - 'a' + 10 : -1;
}

// 0x80 set in each byte of w that is a quote, a backslash, below 0x20 or above 0x7F.
// The lowest set bit is exact (the subtraction only borrows upward from a matching
// byte), so it locates the first byte the string scanner must look at.
std::uint64_t special_bytes(std::uint64_t w) {
  constexpr std::uint64_t ones = 0x0101010101010101ULL;
  constexpr std::uint64_t highs = 0x8080808080808080ULL;
  const std::uint64_t q = w ^ (ones * '"');
  const std::uint64_t b = w ^ (ones * '\\');
  const std::uint64_t zero_q = (q - ones) & ~q;
  const std::uint64_t zero_b = (b - ones) & ~b;
  const std::uint64_t ctl = (w - ones * 0x20) & ~w;
  return (zero_q | zero_b | ctl | w) & highs;
}

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::uint32_t hex4(const Byte* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = v << 4 | static_cast<std::uint32_t>(hex_digit(p[i]));
  return v;
}

// The raw bytes of a key the scanner already accepted, unescaped to UTF-8.
std::string decode_key(const Byte* p, const Byte* e) {
  std::string out;
  while (p < e) {
    if (*p != '\\') {
      out += static_cast<char>(*p++);
      continue;
    }
    const Byte c = p[1];
    p += 2;
    switch (c) {
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'u': {
        std::uint32_t cp = hex4(p);
        p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (hex4(p + 2) - 0xDC00);
          p += 6;
        }
        append_utf8(out, cp);
        break;
      }
      default: out += static_cast<char>(c); break;  // " \ /
    }
  }
  return out;
}

bool is_identifier(std::string_view k) {
  if (k.empty() || is_digit(static_cast<Byte>(k[0]))) return false;
  return std::all_of(k.begin(), k.end(), [](char ch) {
    const auto c = static_cast<Byte>(ch);
    return is_alpha(c) || is_digit(c) || c == '_';
  });
}

void append_escaped(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (char ch : s) {
    const auto c = static_cast<Byte>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += ch;
        }
    }
  }
}

// $.name for identifiers, $["other"] JSON-escaped otherwise; a key over kPathKeyBytes is
// cut on a UTF-8 boundary and marked with "...".
void append_key(std::string& out, std::string key) {
  const bool ident = is_identifier(key);
  const bool cut = key.size() > kPathKeyBytes;
  if (cut) {
    std::size_t n = kPathKeyBytes;
    while (n > 0 && (static_cast<Byte>(key[n]) & 0xC0) == 0x80) --n;
    key.resize(n);
    key += "...";
  }
  if (ident) {
    out += '.';
    out += key;
  } else {
    out += "[\"";
    append_escaped(out, key);
    out += "\"]";
  }
}

struct Frame {
  bool object;
  std::size_t key_pos;  // object: offset of the current key's first byte inside its quotes
  std::size_t n;        // object: raw length of that key; array: index of the current element
};

class Checker {
 public:
  Checker(std::string_view data, std::size_t max_depth, std::size_t max_nodes)
      : begin_(reinterpret_cast<const Byte*>(data.data())),
        p_(begin_),
        end_(begin_ + data.size()),
        max_depth_(max_depth),
        max_nodes_(max_nodes) {}

  JsonCheck run() {
    r_.ok = scan();
    return std::move(r_);
  }

 private:
  enum class State { value, key, after };

  const Byte* begin_;
  const Byte* p_;
  const Byte* end_;
  std::size_t max_depth_;
  std::size_t max_nodes_;
  std::vector<Frame> stack_;
  JsonCheck r_;

  void skip_ws() {
    if (p_ != end_ && *p_ > ' ') [[likely]] return;  // most tokens follow one another directly
    while (p_ != end_ && is_ws(*p_)) ++p_;
  }
  // leaf: whether the path includes the innermost container's current element or key.
  bool fail(std::string why, const Byte* at, bool leaf);
  bool truncated(bool leaf) { return fail("unexpected end of input", end_, leaf); }
  bool scan();
  // leaf is false inside an object key: the key's path is its object's.
  bool scan_string(bool leaf);
  bool scan_escape(const Byte*& p, bool leaf);
  bool scan_u_escape(const Byte* q, std::uint32_t& unit, bool leaf);
  bool scan_utf8(const Byte*& p, bool leaf);
  bool scan_number();
  bool scan_literal(std::string_view word);
  bool count_node(const Byte* at, bool leaf) {
    if (++r_.nodes <= max_nodes_) return true;
    return fail("more than " + std::to_string(max_nodes_) + " values", at, leaf);
  }
  std::string path(bool leaf) const;
};

bool Checker::fail(std::string why, const Byte* at, bool leaf) {
  r_.ok = false;
  r_.error = std::move(why);
  r_.offset = static_cast<std::size_t>(at - begin_);
  r_.path = path(leaf);
  return false;
}

std::string Checker::path(bool leaf) const {
  std::string out = "$";
  const std::size_t n = leaf ? stack_.size() : (stack_.empty() ? 0 : stack_.size() - 1);
  for (std::size_t i = 0; i < n; ++i) {
    const Frame& f = stack_[i];
    if (f.object) {
      append_key(out, decode_key(begin_ + f.key_pos, begin_ + f.key_pos + f.n));
    } else {
      out += '[';
      out += std::to_string(f.n);
      out += ']';
    }
  }
  return out;
}

// p_ is on the opening quote; on success it is past the closing one.
bool Checker::scan_string(bool leaf) {
  const Byte* p = p_ + 1;
  for (;;) {
    while (end_ - p >= 8) {
      std::uint64_t w;
      std::memcpy(&w, p, 8);
      if constexpr (std::endian::native == std::endian::big) w = __builtin_bswap64(w);
      const std::uint64_t m = special_bytes(w);
      if (m != 0) {
        p += std::countr_zero(m) >> 3;
        break;
      }
      p += 8;
    }
    if (p == end_) return truncated(leaf);
    const Byte c = *p;
    if (c == '"') {
      p_ = p + 1;
      return true;
    }
    if (c == '\\') {
      if (!scan_escape(p, leaf)) return false;
    } else if (c >= 0x80) {
      if (!scan_utf8(p, leaf)) return false;
    } else if (c < 0x20) {
      return fail("control character in string", p, leaf);
    } else {
      ++p;  // the short tail of the input, read a byte at a time
    }
  }
}

// Reads the \uXXXX at q into unit.
bool Checker::scan_u_escape(const Byte* q, std::uint32_t& unit, bool leaf) {
  for (int i = 2; i < 6; ++i) {
    if (q + i == end_) return truncated(leaf);
    if (hex_digit(q[i]) < 0) return fail("invalid \\u escape", q, leaf);
  }
  unit = hex4(q + 2);
  return true;
}

bool Checker::scan_escape(const Byte*& p, bool leaf) {
  const Byte* esc = p;
  if (end_ - p < 2) return truncated(leaf);
  switch (p[1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
      p += 2;
      return true;
    case 'u': break;
    default: return fail("invalid escape", esc, leaf);
  }
  std::uint32_t hi = 0;
  if (!scan_u_escape(p, hi, leaf)) return false;
  p += 6;
  if (hi >= 0xDC00 && hi <= 0xDFFF) return fail("lone surrogate", esc, leaf);
  if (hi < 0xD800 || hi > 0xDBFF) return true;
  // A high surrogate needs a low one right after it: alone it cannot be encoded as UTF-8.
  if (p == end_ || (*p == '\\' && p + 1 == end_)) return truncated(leaf);
  if (p[0] != '\\' || p[1] != 'u') return fail("lone surrogate", esc, leaf);
  std::uint32_t lo = 0;
  if (!scan_u_escape(p, lo, leaf)) return false;
  if (lo < 0xDC00 || lo > 0xDFFF) return fail("lone surrogate", esc, leaf);
  p += 6;
  return true;
}

// Unicode 15, table 3-7: the well-formed byte sequences.
bool Checker::scan_utf8(const Byte*& p, bool leaf) {
  const Byte c = *p;
  int n;
  Byte lo = 0x80, hi = 0xBF;  // the range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 2;
    if (c == 0xE0) lo = 0xA0;  // overlong
    if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 3;
    if (c == 0xF0) lo = 0x90;  // overlong
    if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return fail("invalid UTF-8", p, leaf);
  }
  for (int i = 1; i <= n; ++i) {
    if (p + i == end_) return truncated(leaf);
    const Byte b = p[i];
    if (b < lo || b > hi) return fail("invalid UTF-8", p, leaf);
    lo = 0x80, hi = 0xBF;
  }
  p += n + 1;
  return true;
}

bool Checker::scan_number() {
  const Byte* start = p_;
  const Byte* p = p_;
  const bool negative = *p == '-';
  if (negative && ++p == end_) return truncated(true);
  const Byte* int_begin = p;
  if (*p == '0') {
    ++p;
    if (p != end_ && is_digit(*p)) return fail("leading zero in number", start, true);
  } else if (is_digit(*p)) {
    while (++p != end_ && is_digit(*p)) {
    }
  } else {
    return fail("invalid number", p, true);
  }
  const auto int_digits = static_cast<std::size_t>(p - int_begin);
  const Byte* frac_begin = p;
  const Byte* frac_end = p;
  bool integer = true;
  if (p != end_ && *p == '.') {
    integer = false;
    if (++p == end_) return truncated(true);
    if (!is_digit(*p)) return fail("invalid number", p, true);
    frac_begin = p;
    while (++p != end_ && is_digit(*p)) {
    }
    frac_end = p;
  }
  std::int64_t exponent = 0;
  if (p != end_ && (*p | 0x20) == 'e') {
    integer = false;
    if (++p == end_) return truncated(true);
    const bool minus = *p == '-';
    if ((*p == '-' || *p == '+') && ++p == end_) return truncated(true);
    if (!is_digit(*p)) return fail("invalid number", p, true);
    // Saturates at 10^17, far past any input's length, so no count of digits or leading
    // zeros can bring a saturated exponent back into range (and int64 cannot overflow).
    for (; p != end_ && is_digit(*p); ++p)
      if (exponent < 100'000'000'000'000'000) exponent = exponent * 10 + (*p - '0');
    if (minus) exponent = -exponent;
  }
  // Names 1.2.3, 0x10, 12abc, 1-2 as numbers gone wrong rather than as a missing comma.
  if (p != end_ && (is_alpha(*p) || is_digit(*p) || *p == '.' || *p == '+' || *p == '-'))
    return fail("invalid number", p, true);
  p_ = p;

  if (integer) {
    // Without leading zeros the digit count bounds the value: 2^64-1 has 20 digits, 2^63 has 19.
    const std::size_t limit_digits = negative ? 19 : 20;
    if (int_digits < limit_digits) return true;
    if (int_digits == limit_digits) {
      std::uint64_t v = 0;
      bool overflow = false;
      for (const Byte* q = int_begin; q != frac_begin; ++q)
        overflow |= __builtin_mul_overflow(v, 10U, &v) || __builtin_add_overflow(v, *q - '0', &v);
      if (!overflow && (!negative || v <= (std::uint64_t{1} << 63))) return true;
    }
    return fail("integer out of range", start, true);
  }
  // The value is 0.d1d2... x 10^e10 with d1 nonzero: below 10^308 it is finite, from 10^309
  // it overflows (DBL_MAX is 1.797e308), and only the decade between needs a real parse.
  // Underflow is fine: the value rounds to zero or a subnormal.
  std::int64_t e10;
  if (*int_begin != '0') {
    e10 = static_cast<std::int64_t>(int_digits) + exponent;
  } else {
    const Byte* q = frac_begin;
    while (q != frac_end && *q == '0') ++q;
    if (q == frac_end) return true;  // zero, whatever the exponent
    e10 = exponent - static_cast<std::int64_t>(q - frac_begin);
  }
  if (e10 <= 308) return true;
  if (e10 == 309) {
    double v = 0;
    const auto res = std::from_chars(reinterpret_cast<const char*>(start), reinterpret_cast<const char*>(p), v);
    if (res.ec == std::errc{} && res.ptr == reinterpret_cast<const char*>(p)) return true;
  }
  return fail("number out of range", start, true);
}

bool Checker::scan_literal(std::string_view word) {
  const auto avail = static_cast<std::size_t>(end_ - p_);
  if (std::memcmp(p_, word.data(), std::min(avail, word.size())) != 0) return fail("invalid literal", p_, true);
  if (avail < word.size()) return truncated(true);
  const Byte* after = p_ + word.size();
  if (after != end_ && (is_alpha(*after) || is_digit(*after))) return fail("invalid literal", p_, true);
  p_ = after;
  return true;
}

bool Checker::scan() {
  skip_ws();
  if (p_ == end_) return fail("empty document", p_, false);
  stack_.reserve(std::min(max_depth_, kReservedFrames));
  State s = State::value;
  for (;;) {
    switch (s) {
      case State::value: {
        skip_ws();
        if (p_ == end_) return truncated(true);
        if (!count_node(p_, true)) return false;
        const Byte c = *p_;
        switch (c) {
          case '{':
          case '[': {
            const bool object = c == '{';
            if (stack_.size() >= max_depth_) {
              r_.depth = stack_.size() + 1;
              return fail("nested deeper than " + std::to_string(max_depth_), p_, true);
            }
            stack_.push_back({object, 0, 0});
            r_.depth = std::max(r_.depth, stack_.size());
            ++p_;
            skip_ws();
            if (p_ == end_) return truncated(!object);
            if (*p_ == (object ? '}' : ']')) {
              ++p_;
              stack_.pop_back();
              s = State::after;
            } else {
              s = object ? State::key : State::value;
            }
            break;
          }
          case '"':
            if (!scan_string(true)) return false;
            s = State::after;
            break;
          case '-': case '0': case '1': case '2': case '3': case '4':
          case '5': case '6': case '7': case '8': case '9':
            if (!scan_number()) return false;
            s = State::after;
            break;
          case 't':
          case 'f':
          case 'n':
            if (!scan_literal(c == 't' ? "true" : c == 'f' ? "false" : "null")) return false;
            s = State::after;
            break;
          case '+':
          case '.':
            return fail("invalid number", p_, true);
          default:
            return fail(is_alpha(c) ? "invalid literal" : "expected a value", p_, true);
        }
        break;
      }
      case State::key: {
        skip_ws();
        if (p_ == end_) return truncated(false);
        if (*p_ != '"') return fail("expected a string key", p_, false);
        if (!count_node(p_, false)) return false;
        const Byte* key = p_ + 1;
        if (!scan_string(false)) return false;
        Frame& f = stack_.back();
        f.key_pos = static_cast<std::size_t>(key - begin_);
        f.n = static_cast<std::size_t>(p_ - 1 - key);
        skip_ws();
        if (p_ == end_) return truncated(true);
        if (*p_ != ':') return fail("expected ':'", p_, true);
        ++p_;
        s = State::value;
        break;
      }
      case State::after: {
        skip_ws();
        if (stack_.empty()) {
          if (p_ != end_) return fail("trailing data", p_, false);
          return true;
        }
        if (p_ == end_) return truncated(false);
        Frame& f = stack_.back();
        const Byte c = *p_;
        if (c == ',') {
          ++p_;
          if (f.object) {
            s = State::key;
          } else {
            ++f.n;
            s = State::value;
          }
        } else if (c == (f.object ? '}' : ']')) {
          ++p_;
          stack_.pop_back();
        } else {
          return fail(f.object ? "expected ',' or '}'" : "expected ',' or ']'", p_, false);
        }
        break;
      }
    }
  }
}

}  // namespace

JsonCheck json_check(std::string_view data, std::size_t max_depth, std::size_t max_nodes) {
  return Checker(data, max_depth, max_nodes).run();
}

}  // namespace probe
