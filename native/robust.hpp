// Robust statistics for the controller's general detectors: the median and the median
// absolute deviation of a run of doubles, NaN (a sample without the signal) left out.
#pragma once

#include <cstddef>

namespace probe {

struct MedianMad {
  double median = 0.0;
  double mad = 0.0;
  std::size_t n = 0;  // the values counted (0: none, median and mad meaningless)
};

// Even counts take the mean of the two middle values, as Python's statistics.median does.
MedianMad median_mad(const double* values, std::size_t count);

}  // namespace probe
