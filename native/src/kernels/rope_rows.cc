#include "kernels/rope_rows.h"

#include <cmath>

namespace ew {

void rope_cos_sin(const RopeTable& table, const int64_t* positions, int64_t T, std::vector<float>& cos_rows,
                  std::vector<float>& sin_rows) {
  const int64_t half = table.dim / 2;
  cos_rows.resize(static_cast<size_t>(T * half));
  sin_rows.resize(cos_rows.size());
  for (int64_t t = 0; t < T; ++t) {
    const double p = static_cast<double>(positions[t]) * table.position_scale;
    for (int64_t i = 0; i < half; ++i) {
      const double a = p * table.inv_freq[i];
      cos_rows[t * half + i] = static_cast<float>(std::cos(a) * table.mscale);
      sin_rows[t * half + i] = static_cast<float>(std::sin(a) * table.mscale);
    }
  }
}

}  // namespace ew
