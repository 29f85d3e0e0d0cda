// Training-mode BatchNorm (batch statistics), optionally followed by ReLU6, for MindSpore's AOT
// custom operators on CPU (NCHW, float32): forward and backward, each in two passes over a channel.
// On CPU, MindSpore 2.10's BatchNorm + ReLU6 and their gradients took ~40% of MobileNetV2's
// training step (profiled at 0.35 @ 96, batch 32); here one channel's N planes are normalised
// while still in cache, and ReLU6 costs no extra pass.
// Same signature as depthwise.cc. Sums are accumulated in double per channel by one thread in a
// fixed order, so results are deterministic and agree with MindSpore's BatchNorm to float rounding.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "dw_plane.h"
#include "team.h"

namespace {

// ACT: 0 = none, 2 = ReLU6 after the affine map.
// y = (x - mean) / sqrt(var + eps) * gamma + beta; mean and the biased var are outputs (for the
// backward). The moving statistics are updated in place, by nn.BatchNorm2d's rule with w the weight
// of the batch: moving = (1 - w) * moving + w * batch, the variance unbiased. In the graph these were
// two Assign ops and their arithmetic per layer, which cost a third of the training step's compile time.
template <int ACT>
void bn_forward(const float *x, const float *gamma, const float *beta, float *y, float *mean_out, float *var_out,
                float *moving_mean, float *moving_var, double w, int64_t n, int64_t c, int64_t hw, float eps) {
  const double m = static_cast<double>(n * hw);
  const double unbias = m / std::max(m - 1.0, 1.0);
  mnv2::parallel_for(c, [&](int64_t ch) {
    double s = 0.0, ss = 0.0;
    for (int64_t b = 0; b < n; ++b) {
      const float *p = x + (b * c + ch) * hw;
#pragma omp simd reduction(+ : s, ss)
      for (int64_t i = 0; i < hw; ++i) {
        const double v = p[i];
        s += v;
        ss += v * v;
      }
    }
    const double mu = s / m;
    const double var = std::max(ss / m - mu * mu, 0.0);
    const double inv = 1.0 / std::sqrt(var + static_cast<double>(eps));
    // (x - mean) * a + beta rather than x * a + (beta - mean * a): a = gamma * invstd reaches
    // 1 / sqrt(eps) ~ 316 on a constant channel, where the second form loses beta to rounding
    const float a = static_cast<float>(gamma[ch] * inv);
    const float fmu = static_cast<float>(mu), b0 = beta[ch];
    mean_out[ch] = fmu;
    var_out[ch] = static_cast<float>(var);
    moving_mean[ch] = static_cast<float>(moving_mean[ch] * (1.0 - w) + mu * w);
    moving_var[ch] = static_cast<float>(moving_var[ch] * (1.0 - w) + var * unbias * w);
    for (int64_t b = 0; b < n; ++b) {
      const float *p = x + (b * c + ch) * hw;
      float *q = y + (b * c + ch) * hw;
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) {
        float v = (p[i] - fmu) * a + b0;
        if (ACT == 2) v = std::min(std::max(v, 0.f), 6.f);
        q[i] = v;
      }
    }
  });
}

// ReLU6's gradient from its output: d where 0 < y < 6, else 0; a product, not a branch (masks are random)
inline float relu6_grad(float d, float y) { return d * static_cast<float>((y > 0.f) & (y < 6.f)); }

// dz = dy * [0 < y < 6] (ReLU6's gradient, from its output) or dy; then the BatchNorm gradient
// dx = gamma * invstd * (dz - mean(dz) - xhat * mean(dz * xhat)), dgamma = sum(dz * xhat), dbeta = sum(dz).
template <int ACT>
void bn_backward(const float *x, const float *gamma, const float *mean, const float *var, const float *y,
                 const float *dy, float *dx, float *dgamma, float *dbeta, int64_t n, int64_t c, int64_t hw,
                 float eps) {
  const double m = static_cast<double>(n * hw);
  mnv2::parallel_for(c, [&](int64_t ch) {
    const float mu = mean[ch];
    double sdz = 0.0, sdzx = 0.0;
    for (int64_t b = 0; b < n; ++b) {
      const int64_t off = (b * c + ch) * hw;
      const float *px = x + off, *py = y + off, *pd = dy + off;
#pragma omp simd reduction(+ : sdz, sdzx)
      for (int64_t i = 0; i < hw; ++i) {
        float d = pd[i];
        if (ACT == 2) d = relu6_grad(d, py[i]);
        sdz += d;
        sdzx += static_cast<double>(d) * (px[i] - mu);
      }
    }
    const double inv = 1.0 / std::sqrt(static_cast<double>(var[ch]) + static_cast<double>(eps));
    const double dg = sdzx * inv;  // sum(dz * xhat)
    dgamma[ch] = static_cast<float>(dg);
    dbeta[ch] = static_cast<float>(sdz);
    // dx = a * ((dz - mean(dz)) - (x - mu) * k): the bracket first, so that it cancels before the
    // scale a = gamma * invstd (up to 1 / sqrt(eps) ~ 316) multiplies its rounding
    const float fa = static_cast<float>(gamma[ch] * inv);
    const float mdz = static_cast<float>(sdz / m);
    const float k = static_cast<float>(inv * dg / m);
    for (int64_t b = 0; b < n; ++b) {
      const int64_t off = (b * c + ch) * hw;
      const float *px = x + off, *py = y + off, *pd = dy + off;
      float *q = dx + off;
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) {
        float d = pd[i];
        if (ACT == 2) d = relu6_grad(d, py[i]);
        q[i] = fa * ((d - mdz) - (px[i] - mu) * k);
      }
    }
  });
}

}  // namespace

#pragma GCC visibility push(default)  // the entry points; everything else is hidden (-fvisibility=hidden)
extern "C" {

// inputs: x (N,C,H,W), gamma (C), beta (C), eps (1,), moving_mean (C), moving_var (C), w (1,);
// outputs: y (N,C,H,W), mean (C), var (C, biased). moving_mean and moving_var are updated in place.
#define BN_FORWARD(NAME, ACT)                                                                                  \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != 10 || ndims[0] != 4) return 1;                                                             \
    if (mnv2::check_f32(nparam, dtypes)) return 2;                                                           \
    const int64_t *xs = shapes[0];                                                                           \
    bn_forward<ACT>(static_cast<float *>(params[0]), static_cast<float *>(params[1]),                         \
                    static_cast<float *>(params[2]), static_cast<float *>(params[7]),                         \
                    static_cast<float *>(params[8]), static_cast<float *>(params[9]),                         \
                    static_cast<float *>(params[4]), static_cast<float *>(params[5]),                         \
                    *static_cast<float *>(params[6]), xs[0], xs[1], xs[2] * xs[3],                            \
                    *static_cast<float *>(params[3]));                                                        \
    return 0;                                                                                                \
  }
// inputs: x, gamma, mean, var, y, dy, eps (1,); outputs: dx (N,C,H,W), dgamma (C), dbeta (C)
#define BN_BACKWARD(NAME, ACT)                                                                                 \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != 10 || ndims[0] != 4) return 1;                                                             \
    if (mnv2::check_f32(nparam, dtypes)) return 2;                                                           \
    const int64_t *xs = shapes[0];                                                                           \
    bn_backward<ACT>(static_cast<float *>(params[0]), static_cast<float *>(params[1]),                        \
                     static_cast<float *>(params[2]), static_cast<float *>(params[3]),                        \
                     static_cast<float *>(params[4]), static_cast<float *>(params[5]),                        \
                     static_cast<float *>(params[7]), static_cast<float *>(params[8]),                        \
                     static_cast<float *>(params[9]), xs[0], xs[1], xs[2] * xs[3],                            \
                     *static_cast<float *>(params[6]));                                                       \
    return 0;                                                                                                \
  }

BN_FORWARD(BnTrainForward, 0)
BN_FORWARD(BnTrainForwardRelu6, 2)
BN_BACKWARD(BnTrainBackward, 0)
BN_BACKWARD(BnTrainBackwardRelu6, 2)

}  // extern "C"
#pragma GCC visibility pop
