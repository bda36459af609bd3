// A strict RFC 8259 checker for ingest batches. It builds no values: one pass over
// the bytes says whether the document is acceptable or names its first problem, so the
// controller can refuse a hostile batch before msgspec (which holds the GIL while it
// builds objects, recurses, and keeps msgspec.Raw values unvalidated) sees it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace probe {

struct JsonCheck {
  bool ok = false;
  std::uint64_t nodes = 0;  // every value plus every object key, up to the first problem
  std::size_t depth = 0;    // deepest array/object nesting seen; a bare scalar is 0, [] is 1
  // Set when ok is false. path is jq/msgspec style ($, $.a[1].b, $["odd key"]) and names
  // the value being parsed (for a problem inside an object key, the object); offset is
  // the byte where the problem was found.
  std::string error;
  std::string path;
  std::size_t offset = 0;
};

// Accepts exactly one JSON value with optional space/tab/CR/LF around it, and refuses:
// any grammar error or truncation; strings with raw control bytes, unknown escapes,
// unpaired \u surrogates or invalid UTF-8 (overlong, encoded surrogates, > U+10FFFF);
// integers outside [-2^63, 2^64-1]; fractions or exponents that overflow a double; more
// than max_depth nested arrays/objects; more than max_nodes nodes. It stops at the first
// problem, so a bomb costs no more than the limits allow. No recursion: the nesting
// stack is on the heap and bounded by max_depth.
JsonCheck json_check(std::string_view data, std::size_t max_depth, std::size_t max_nodes);

}  // namespace probe
