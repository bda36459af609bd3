#include "robust.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace probe {
namespace {

// The median of v (reordered in place); v is not empty.
double median_of(std::vector<double>& v) {
  const std::size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
  const double upper = v[mid];
  if (v.size() % 2) return upper;
  const double lower = *std::max_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid));
  return (lower + upper) / 2.0;
}

}  // namespace

MedianMad median_mad(const double* values, std::size_t count) {
  std::vector<double> v;
  v.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    if (!std::isnan(values[i])) v.push_back(values[i]);
  }
  MedianMad out;
  out.n = v.size();
  if (v.empty()) return out;
  out.median = median_of(v);
  for (double& x : v) x = std::fabs(x - out.median);
  out.mad = median_of(v);
  return out;
}

}  // namespace probe
