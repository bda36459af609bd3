// gzip (RFC 1952) through zlib, with a hard cap on decompressed output.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace probe {

std::string gzip_compress(std::string_view data, int level);
// Throws OutputLimitError once the output would pass max_output bytes (a
// decompression bomb) and DecompressError for corrupt or truncated input.
// Concatenated gzip members are one stream, as gzip(1) treats them.
std::string gzip_decompress(std::string_view data, std::size_t max_output);

}  // namespace probe
