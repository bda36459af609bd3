// CRC-32C (Castagnoli), the checksum of spool records. SSE4.2's crc32
// instruction when the CPU has it, a slicing table otherwise.
#pragma once

#include <cstddef>
#include <cstdint>

namespace probe {

// Continues from crc (0 for a fresh checksum), as zlib's crc32() does.
std::uint32_t crc32c(const void* data, std::size_t len, std::uint32_t crc = 0);
bool crc32c_hardware();
// The table path alone, so tests cover it on CPUs that have SSE4.2.
std::uint32_t crc32c_software(const void* data, std::size_t len, std::uint32_t crc = 0);

}  // namespace probe
