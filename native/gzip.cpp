#include "gzip.hpp"

#include <zlib.h>

#include <algorithm>
#include <climits>

#include "common.hpp"

namespace probe {

namespace {

constexpr int kGzipWindow = 15 + 16;  // 32 KiB window, gzip header and trailer

struct Deflater {
  z_stream z{};
  bool live = false;
  ~Deflater() {
    if (live) deflateEnd(&z);
  }
};

struct Inflater {
  z_stream z{};
  bool live = false;
  ~Inflater() {
    if (live) inflateEnd(&z);
  }
};

}  // namespace

std::string gzip_compress(std::string_view data, int level) {
  if (level < -1 || level > 9) throw Error("gzip level must be -1 (default) or 0..9, got " + std::to_string(level));
  if (data.size() > UINT_MAX) throw Error("gzip_compress input over 4 GiB");
  Deflater d;
  if (deflateInit2(&d.z, level, Z_DEFLATED, kGzipWindow, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw Error("deflateInit2 failed");
  d.live = true;
  std::string out;
  out.resize(deflateBound(&d.z, static_cast<uLong>(data.size())));
  d.z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  d.z.avail_in = static_cast<uInt>(data.size());
  d.z.next_out = reinterpret_cast<Bytef*>(out.data());
  d.z.avail_out = static_cast<uInt>(out.size());
  int rc = deflate(&d.z, Z_FINISH);
  if (rc != Z_STREAM_END) throw Error("deflate did not finish (zlib rc " + std::to_string(rc) + ")");
  out.resize(d.z.total_out);
  return out;
}

std::string gzip_decompress(std::string_view data, std::size_t max_output) {
  if (data.size() > UINT_MAX) throw DecompressError("gzip input over 4 GiB");
  Inflater f;
  if (inflateInit2(&f.z, kGzipWindow) != Z_OK) throw DecompressError("inflateInit2 failed");
  f.live = true;
  f.z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  f.z.avail_in = static_cast<uInt>(data.size());
  std::string out;
  out.reserve(std::min<std::size_t>(max_output, data.size() * 4));
  std::string chunk(64 * 1024, '\0');
  for (;;) {
    f.z.next_out = reinterpret_cast<Bytef*>(chunk.data());
    f.z.avail_out = static_cast<uInt>(chunk.size());
    int rc = inflate(&f.z, Z_NO_FLUSH);
    std::size_t produced = chunk.size() - f.z.avail_out;
    // Checked per 64 KiB chunk, so a bomb costs at most max_output plus one chunk.
    if (produced > max_output - out.size())
      throw OutputLimitError("gzip output exceeds the limit of " + std::to_string(max_output) + " bytes");
    out.append(chunk.data(), produced);
    if (rc == Z_STREAM_END) {
      // More input after a member is another member (gzip -c a b > c is one stream).
      if (f.z.avail_in == 0) break;
      if (inflateReset(&f.z) != Z_OK) throw DecompressError("inflateReset failed");
      continue;
    }
    if (rc == Z_OK && (f.z.avail_in != 0 || f.z.avail_out == 0)) continue;
    if (rc == Z_OK || rc == Z_BUF_ERROR) throw DecompressError("truncated gzip data");
    throw DecompressError(std::string("corrupt gzip data: ") + (f.z.msg != nullptr ? f.z.msg : "zlib error"));
  }
  return out;
}

}  // namespace probe
