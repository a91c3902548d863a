#include "engine/rope_config.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace ew {
namespace {

constexpr double kPi = 3.14159265358979323846;

// Inverse dim formula: the rope dim at which num_rotations full turns fit max_pos.
double yarn_correction_dim(double num_rotations, double dim, double base, double max_pos) {
  return (dim * std::log(max_pos / (num_rotations * 2 * kPi))) / (2 * std::log(base));
}

}  // namespace

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

RopeTable make_rope_table(const ModelConfig& cfg) {
  RopeTable t;
  t.dim = cfg.rope_dim();
  if (t.dim <= 0 || t.dim % 2) fail("rope: the rotated dims per head must be even and positive, got ", t.dim);
  const int64_t half = t.dim / 2;
  const double base = cfg.rope_theta, dim = static_cast<double>(t.dim);
  t.inv_freq.resize(half);
  for (int64_t i = 0; i < half; ++i) t.inv_freq[i] = 1.0 / std::pow(base, static_cast<double>(2 * i) / dim);

  double scale = 1.0 / std::sqrt(static_cast<double>(cfg.q_head_dim()));
  if (cfg.rope_scaling != RopeScaling::None) {
    const double factor = cfg.rope_factor;
    if (cfg.rope_scaling == RopeScaling::Linear) t.position_scale = 1.0 / factor;
    if (cfg.rope_scaling == RopeScaling::Yarn) {
      const double orig = static_cast<double>(cfg.rope_original_max_position);
      if (orig <= 0) fail("rope: yarn scaling needs original_max_position_embeddings");
      const double low = std::max(0.0, std::floor(yarn_correction_dim(cfg.rope_beta_fast, dim, base, orig)));
      double high = std::min(dim - 1, std::ceil(yarn_correction_dim(cfg.rope_beta_slow, dim, base, orig)));
      if (low == high) high += 0.001;  // avoid a division by zero in the ramp
      for (int64_t i = 0; i < half; ++i) {
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double mask = 1.0 - ramp;  // 1: keep the original frequency (extrapolate)
        const double extra = t.inv_freq[i], inter = extra / factor;
        t.inv_freq[i] = inter * (1 - mask) + extra * mask;
      }
      t.mscale = yarn_get_mscale(factor, cfg.rope_mscale) / yarn_get_mscale(factor, cfg.rope_mscale_all_dim);
    }
    if (cfg.rope_mscale_all_dim != 0) {
      const double m = yarn_get_mscale(factor, cfg.rope_mscale_all_dim);
      scale *= m * m;
    }
  }
  t.softmax_scale = static_cast<float>(scale);
  return t;
}

}  // namespace ew
