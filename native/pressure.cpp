#include <cerrno>

#include "common.hpp"
#include "readers.hpp"

namespace probe {

namespace {

PsiLine parse_psi_line(std::string_view line, std::string_view rest) {
  // "avg10=0.00 avg60=0.00 avg300=0.00 total=0"
  PsiLine p;
  unsigned seen = 0;
  for (auto kv : split_ws(rest)) {
    auto eq = kv.find('=');
    if (eq == std::string_view::npos) parse_fail("pressure line", line);
    auto k = kv.substr(0, eq);
    auto v = kv.substr(eq + 1);
    bool ok = true;
    if (k == "avg10") ok = parse_double(v, p.avg10), seen |= 1;
    else if (k == "avg60") ok = parse_double(v, p.avg60), seen |= 2;
    else if (k == "avg300") ok = parse_double(v, p.avg300), seen |= 4;
    else if (k == "total") ok = parse_u64(v, p.total_us), seen |= 8;
    if (!ok) parse_fail("pressure line", line);
  }
  if (seen != 15) parse_fail("pressure line", line);
  return p;
}

}  // namespace

PsiFile parse_pressure(std::string_view text) {
  PsiFile out;
  LineReader lines(text);
  std::string_view line;
  while (lines.next(line)) {
    if (trim(line).empty()) continue;
    if (line.substr(0, 5) == "some ") out.some = parse_psi_line(line, line.substr(5));
    else if (line.substr(0, 5) == "full ") out.full = parse_psi_line(line, line.substr(5));
    else parse_fail("pressure line", line);
  }
  if (!out.some && !out.full) throw ParseError("pressure file is empty");
  return out;
}

Pressure read_pressure(const std::string& root) {
  Pressure p;
  std::string text;
  for (const char* name : {"cpu", "memory", "io", "irq"}) {
    PsiResource r;
    r.name = name;
    int err = 0;
    std::string path = join_root(root, std::string("/proc/pressure/") + name);
    if (try_read_file(path, text, &err)) {
      r.value = parse_pressure(text);
      p.available = true;
    } else if (err == ENOENT || err == EOPNOTSUPP || err == ENOTDIR) {
      // Linux < 4.20, CONFIG_PSI=n, or psi=0 on the command line; irq needs 6.1 and
      // CONFIG_IRQ_TIME_ACCOUNTING.
      r.reason = path + ": " + errno_text(err);
      if (std::string_view(name) == "irq") continue;
    } else {
      throw ReadError(err, path);
    }
    p.resources.push_back(std::move(r));
  }
  if (!p.available) p.reason = "PSI not available (Linux >= 4.20 with CONFIG_PSI=y and psi enabled): " +
                               p.resources.front().reason;
  return p;
}

}  // namespace probe
