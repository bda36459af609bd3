// Process capabilities through capget(2).
#pragma once

#include <cstdint>

namespace probe {

struct CapSets {
  std::uint64_t effective = 0, permitted = 0, inheritable = 0;
};

// This process's capability sets. Throws ReadError if capget fails.
CapSets capget_self();

}  // namespace probe
