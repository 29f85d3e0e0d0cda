// Depthwise 3x3 convolution (NCHW, float32, no bias; stride S in {1, 2}, dilation D in {1, 2, 4},
// padding D so that the output is ceil(input / S)) for MindSpore's AOT custom operators on CPU:
// forward, input gradient and weight gradient; for inference with BatchNorm folded, a forward with
// bias (+ ReLU6) and a per-channel bias (+ ReLU6, + residual) epilogue for 1x1 convolutions.
// Signature documented for ops.Custom(func_type="aot"):
//   int Name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
//            void *stream, void *extra)
// params = inputs then outputs. Built at run time by mindcv_mnv2/ops/depthwise.py
// (g++ -O3 -march=native -fopenmp-simd -pthread -shared -fPIC; threads: team.h). Each output element is
// computed by one thread in a fixed order, so results are deterministic (data-parallel ranks stay
// bit-identical) and do not depend on the number of threads.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dw_plane.h"
#include "team.h"

namespace {

using mnv2::check_f32;
using mnv2::dw_plane;
using mnv2::ld;
using mnv2::pad_plane;
using mnv2::v8f;

// ACT: 0 = none, 1 = + bias, 2 = + bias then ReLU6 (inference with BatchNorm folded into w and bias).
template <int S, int D, int ACT = 0>
void forward(const float *x, const float *wt, float *y, int64_t n, int64_t c, int64_t h, int64_t w,
             int64_t oh, int64_t ow, const float *bias = nullptr) {
  if (w < mnv2::NARROW) {  // narrow maps: 8 planes at a time, one per vector lane (dw_lanes8)
    const int64_t planes = n * c, groups = (planes + 7) / 8;
    mnv2::parallel([&](int tid, int nt) {
      std::vector<float> pad(mnv2::lanes8_scratch(h, w, D, oh, ow));
      mnv2::for_share(groups, tid, nt, [&](int64_t g) {
        mnv2::dw_lanes8<S, D, ACT>(x, y, 8 * g, static_cast<int>(std::min<int64_t>(8, planes - 8 * g)),
                                   [c](int64_t q) { return q % c; }, wt, bias, h, w, oh, ow, pad.data());
      });
    });
    return;
  }
  mnv2::parallel([&](int tid, int nt) {
    std::vector<float> pad((h + 2 * D) * (w + 2 * D));
    mnv2::for_share(n * c, tid, nt, [&](int64_t p) {
      dw_plane<S, D, ACT>(x + p * h * w, wt + (p % c) * 9, ACT ? bias[p % c] : 0.f, y + p * oh * ow, h, w, oh, ow,
                          pad.data());
    });
  });
}

// Stride 2 on maps narrower than mnv2::NARROW: 8 planes at a time, one per vector lane (as dw_lanes8),
// each dy element scattered to its nine taps in vectors. Plane by plane (below), a 4-8 pixel map
// cost a zeroed buffer and a copy-out per few outputs.
template <int S, int D>
void grad_input_lanes8(const float *dy, const float *wt, float *dx, int64_t n, int64_t c, int64_t h, int64_t w,
                       int64_t oh, int64_t ow) {
  const int64_t pw = w + 2 * D, planes = n * c, groups = (planes + 7) / 8, ohw = oh * ow;
  mnv2::parallel([&](int tid, int nt) {
    std::vector<float> acc(8 * (h + 2 * D) * pw), g(8 * ohw);
    mnv2::for_share(groups, tid, nt, [&](int64_t gi) {
      const int64_t q0 = 8 * gi;
      const int lanes = static_cast<int>(std::min<int64_t>(8, planes - q0));
      v8f kv[9];
      mnv2::taps_to_lanes8(wt, q0, lanes, [c](int64_t q) { return q % c; }, kv);
      mnv2::to_lanes8(dy + q0 * ohw, lanes, oh, ow, 0, g.data());
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
          const v8f gv = ld(g.data() + 8 * (oy * ow + ox));
          for (int ky = 0; ky < 3; ++ky) {
            float *r = acc.data() + 8 * ((oy * S + ky * D) * pw + ox * S);
            mnv2::st(r, ld(r) + kv[ky * 3] * gv);
            mnv2::st(r + 8 * D, ld(r + 8 * D) + kv[ky * 3 + 1] * gv);
            mnv2::st(r + 16 * D, ld(r + 16 * D) + kv[ky * 3 + 2] * gv);
          }
        }
      mnv2::from_lanes8(acc.data(), lanes, h, w, D, dx + q0 * h * w);
    });
  });
}

template <int S, int D>
void grad_input(const float *dy, const float *wt, float *dx, int64_t n, int64_t c, int64_t h, int64_t w,
                int64_t oh, int64_t ow) {
  if (S == 2 && w < mnv2::NARROW) {
    grad_input_lanes8<S, D>(dy, wt, dx, n, c, h, w, oh, ow);
    return;
  }
  if (S == 1) {
    // Stride 1: dx is dy correlated with the kernel turned by 180 degrees (same padding D), i.e. the
    // forward kernel, which keeps all nine taps in registers (~2x faster than scattering rows).
    std::vector<float> flip(c * 9);
    for (int64_t ch = 0; ch < c; ++ch)
      for (int t = 0; t < 9; ++t) flip[ch * 9 + t] = wt[ch * 9 + 8 - t];
    forward<1, D>(dy, flip.data(), dx, n, c, oh, ow, h, w);
    return;
  }
  mnv2::parallel([&](int tid, int nt) {
    const int64_t pw = w + 2 * D;
    std::vector<float> acc((h + 2 * D) * pw);
    mnv2::for_share(n * c, tid, nt, [&](int64_t p) {
      const float *k = wt + (p % c) * 9;
      std::fill(acc.begin(), acc.end(), 0.f);
      const float *g = dy + p * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy) {
        const float *gr = g + oy * ow;
        for (int ky = 0; ky < 3; ++ky) {
          float *row = acc.data() + (oy * S + ky * D) * pw;
          const float k0 = k[ky * 3], k1 = k[ky * 3 + 1], k2 = k[ky * 3 + 2];
          for (int64_t ox = 0; ox < ow; ++ox) {
            const float v = gr[ox];
            row[ox * S] += k0 * v;
            row[ox * S + D] += k1 * v;
            row[ox * S + 2 * D] += k2 * v;
          }
        }
      }
      float *out = dx + p * h * w;
      for (int64_t y = 0; y < h; ++y) std::memcpy(out + y * w, acc.data() + (y + D) * pw + D, sizeof(float) * w);
    });
  });
}

// Stride 1: the nine tap sums over 8 output columns at a time, in nine vector registers held over
// the whole plane (rows of dy padded with zeros to a multiple of 8, so the spare lanes add nothing).
template <int D>
void grad_weight_s1(const float *x, const float *dy, float *dw, int64_t n, int64_t c, int64_t h, int64_t w) {
  const int64_t wb = (w + 7) / 8 * 8;
  const int64_t pw = wb + 2 * D;
  mnv2::parallel([&](int tid, int nt) {
    std::vector<float> pad((h + 2 * D) * pw, 0.f);
    std::vector<float> g(h * wb, 0.f);  // tail columns stay zero
    mnv2::for_share(c, tid, nt, [&](int64_t ch) {
      double sum[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};  // double: a sum over the whole batch
      for (int64_t b = 0; b < n; ++b) {
        const int64_t p = b * c + ch;
        const float *xs = x + p * h * w, *gs = dy + p * h * w;
        for (int64_t y = 0; y < h; ++y) {  // borders and tails were zeroed once and are never written
          std::memcpy(pad.data() + (y + D) * pw + D, xs + y * w, sizeof(float) * w);
          std::memcpy(g.data() + y * wb, gs + y * w, sizeof(float) * w);
        }
        v8f a[9];
        for (int t = 0; t < 9; ++t) a[t] = v8f{0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t oy = 0; oy < h; ++oy) {
          for (int64_t x0 = 0; x0 < wb; x0 += 8) {
            const v8f gv = ld(g.data() + oy * wb + x0);
            for (int ky = 0; ky < 3; ++ky) {
              const float *r = pad.data() + (oy + ky * D) * pw + x0;
              a[ky * 3] += gv * ld(r);
              a[ky * 3 + 1] += gv * ld(r + D);
              a[ky * 3 + 2] += gv * ld(r + 2 * D);
            }
          }
        }
        for (int t = 0; t < 9; ++t) {
          double s = 0.0;
          for (int j = 0; j < 8; ++j) s += a[t][j];
          sum[t] += s;
        }
      }
      for (int i = 0; i < 9; ++i) dw[ch * 9 + i] = static_cast<float>(sum[i]);
    });
  });
}

// Maps narrower than mnv2::NARROW: 8 channels at a time, one per vector lane (as dw_lanes8), the nine
// tap sums of each image in vector registers, then added up over the batch in double per lane. Per
// plane, the loops below ran MobileNetV2's 2x2-8x8 maps at a few outputs per setup.
template <int S, int D>
void grad_weight_lanes8(const float *x, const float *dy, float *dw, int64_t n, int64_t c, int64_t h, int64_t w,
                        int64_t oh, int64_t ow) {
  const int64_t pw = w + 2 * D, groups = (c + 7) / 8, ohw = oh * ow;
  mnv2::parallel([&](int tid, int nt) {
    std::vector<float> pad(8 * (h + 2 * D) * pw, 0.f);  // the zero border is never written
    std::vector<float> g(8 * ohw);
    mnv2::for_share(groups, tid, nt, [&](int64_t gi) {
      const int64_t c0 = 8 * gi;
      const int lanes = static_cast<int>(std::min<int64_t>(8, c - c0));
      double sum[9][8] = {};
      for (int64_t b = 0; b < n; ++b) {
        mnv2::to_lanes8(x + (b * c + c0) * h * w, lanes, h, w, D, pad.data());
        mnv2::to_lanes8(dy + (b * c + c0) * ohw, lanes, oh, ow, 0, g.data());
        v8f a[9];
        for (int t = 0; t < 9; ++t) a[t] = v8f{};
        for (int64_t oy = 0; oy < oh; ++oy)
          for (int64_t ox = 0; ox < ow; ++ox) {
            const v8f gv = ld(g.data() + 8 * (oy * ow + ox));
            for (int ky = 0; ky < 3; ++ky) {
              const float *r = pad.data() + 8 * ((oy * S + ky * D) * pw + ox * S);
              a[ky * 3] += gv * ld(r);
              a[ky * 3 + 1] += gv * ld(r + 8 * D);
              a[ky * 3 + 2] += gv * ld(r + 16 * D);
            }
          }
        for (int t = 0; t < 9; ++t)
          for (int l = 0; l < 8; ++l) sum[t][l] += a[t][l];
      }
      for (int l = 0; l < lanes; ++l)
        for (int t = 0; t < 9; ++t) dw[(c0 + l) * 9 + t] = static_cast<float>(sum[t][l]);
    });
  });
}

template <int S, int D>
void grad_weight(const float *x, const float *dy, float *dw, int64_t n, int64_t c, int64_t h, int64_t w,
                 int64_t oh, int64_t ow) {
  if (w < mnv2::NARROW) {
    grad_weight_lanes8<S, D>(x, dy, dw, n, c, h, w, oh, ow);
    return;
  }
  if (S == 1) {
    grad_weight_s1<D>(x, dy, dw, n, c, h, w);
    return;
  }
  mnv2::parallel([&](int tid, int nt) {
    const int64_t pw = w + 2 * D;
    std::vector<float> pad((h + 2 * D) * pw);
    // Stride 2 (stride 1 returned above). One accumulator row per tap, summed down the plane with
    // vertical adds: a horizontal reduction per output row cost more than the products on
    // MobileNetV2's short rows (6-48).
    std::vector<float> acc(9 * ow);
    mnv2::for_share(c, tid, nt, [&](int64_t ch) {
      double sum[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};  // double: a sum over the whole batch
      for (int64_t b = 0; b < n; ++b) {
        const int64_t p = b * c + ch;
        pad_plane<D>(x + p * h * w, h, w, pad.data());
        const float *g = dy + p * oh * ow;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t oy = 0; oy < oh; ++oy) {
          const float *gr = g + oy * ow;
          for (int ky = 0; ky < 3; ++ky) {
            const float *r = pad.data() + (oy * S + ky * D) * pw;
            float *a0 = acc.data() + (ky * 3) * ow, *a1 = a0 + ow, *a2 = a1 + ow;
            for (int64_t ox = 0; ox < ow; ++ox) {
              const float v = gr[ox];
              a0[ox] += v * r[ox * S];
              a1[ox] += v * r[ox * S + D];
              a2[ox] += v * r[ox * S + 2 * D];
            }
          }
        }
        for (int t = 0; t < 9; ++t) {
          double s = 0.0;
          for (int64_t ox = 0; ox < ow; ++ox) s += acc[t * ow + ox];
          sum[t] += s;
        }
      }
      for (int i = 0; i < 9; ++i) dw[ch * 9 + i] = static_cast<float>(sum[i]);
    });
  });
}

// y = x + bias[channel] (ACT 1), then ReLU6 (ACT 2), plus a residual r (RES): the epilogue of a 1x1
// convolution whose BatchNorm is folded into its weights, in one pass instead of MindSpore's 2-3.
template <int ACT, bool RES>
void bias_act(const float *x, const float *bias, const float *r, float *y, int64_t n, int64_t c, int64_t hw) {
  mnv2::parallel_for(n * c, [&](int64_t p) {
    const float b = bias[p % c];
    const float *xi = x + p * hw;
    const float *ri = RES ? r + p * hw : nullptr;
    float *yo = y + p * hw;
#pragma omp simd
    for (int64_t i = 0; i < hw; ++i) {
      float v = xi[i] + b;
      if (ACT == 2) v = std::min(std::max(v, 0.f), 6.f);
      if (RES) v += ri[i];
      yo[i] = v;
    }
  });
}

// With padding D and a 3x3 kernel dilated by D the output is ceil(in / S), whatever D is.
inline int64_t out_size(int64_t in, int s) { return (in - 1) / s + 1; }

}  // namespace

#pragma GCC visibility push(default)  // the entry points; everything else is hidden (-fvisibility=hidden)
extern "C" {

// inputs: x (N,C,H,W), w (C,1,3,3); output: y (N,C,OH,OW)
#define DW_FORWARD(NAME, S, D)                                                                                 \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != 3 || ndims[0] != 4) return 1;                                                              \
    if (check_f32(nparam, dtypes)) return 2;                                                                 \
    const int64_t *xs = shapes[0];                                                                           \
    forward<S, D>(static_cast<float *>(params[0]), static_cast<float *>(params[1]),                          \
                  static_cast<float *>(params[2]), xs[0], xs[1], xs[2], xs[3], out_size(xs[2], S),           \
                  out_size(xs[3], S));                                                                       \
    return 0;                                                                                                \
  }
// inputs: x (shape only), w, dy; output: dx (N,C,H,W)
#define DW_GRAD_INPUT(NAME, S, D)                                                                              \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != 4) return 1;                                                                               \
    if (check_f32(nparam, dtypes)) return 2;                                                                 \
    const int64_t *xs = shapes[0];                                                                           \
    grad_input<S, D>(static_cast<float *>(params[2]), static_cast<float *>(params[1]),                       \
                     static_cast<float *>(params[3]), xs[0], xs[1], xs[2], xs[3], shapes[2][2], shapes[2][3]); \
    return 0;                                                                                                \
  }
// inputs: x, dy; output: dw (C,1,3,3)
#define DW_GRAD_WEIGHT(NAME, S, D)                                                                             \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != 3) return 1;                                                                               \
    if (check_f32(nparam, dtypes)) return 2;                                                                 \
    const int64_t *xs = shapes[0];                                                                           \
    grad_weight<S, D>(static_cast<float *>(params[0]), static_cast<float *>(params[1]),                      \
                      static_cast<float *>(params[2]), xs[0], xs[1], xs[2], xs[3], shapes[1][2], shapes[1][3]); \
    return 0;                                                                                                \
  }

// inputs: x, w, bias (C); output: y. Inference only (no gradient): BatchNorm folded, ACT as above.
#define DW_FORWARD_BIAS(NAME, S, D, ACT)                                                                       \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != 4 || ndims[0] != 4) return 1;                                                              \
    if (check_f32(nparam, dtypes)) return 2;                                                                 \
    const int64_t *xs = shapes[0];                                                                           \
    forward<S, D, ACT>(static_cast<float *>(params[0]), static_cast<float *>(params[1]),                     \
                       static_cast<float *>(params[3]), xs[0], xs[1], xs[2], xs[3], out_size(xs[2], S),      \
                       out_size(xs[3], S), static_cast<float *>(params[2]));                                 \
    return 0;                                                                                                \
  }

// Named ..S<stride>_D<dilation>: MobileNetV2 uses stride 2 only undilated, and dilation 2 / 4
// for output_stride 16 / 8.
#define DW_ALL(S, D)                                     \
  DW_FORWARD(DwForwardS##S##_D##D, S, D)                 \
  DW_GRAD_INPUT(DwGradInputS##S##_D##D, S, D)            \
  DW_GRAD_WEIGHT(DwGradWeightS##S##_D##D, S, D)          \
  DW_FORWARD_BIAS(DwForwardBiasS##S##_D##D, S, D, 1)     \
  DW_FORWARD_BIAS(DwForwardBiasRelu6S##S##_D##D, S, D, 2)

DW_ALL(1, 1)
DW_ALL(2, 1)
DW_ALL(1, 2)
DW_ALL(1, 4)

// inputs: x (N,C,H,W), bias (C) [, residual (N,C,H,W)]; output: y (N,C,H,W)
#define BIAS_ACT(NAME, ACT, RES)                                                                               \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != (RES ? 4 : 3) || ndims[0] != 4) return 1;                                                  \
    if (check_f32(nparam, dtypes)) return 2;                                                                 \
    const int64_t *xs = shapes[0];                                                                           \
    bias_act<ACT, RES>(static_cast<float *>(params[0]), static_cast<float *>(params[1]),                     \
                       RES ? static_cast<float *>(params[2]) : nullptr,                                      \
                       static_cast<float *>(params[RES ? 3 : 2]), xs[0], xs[1], xs[2] * xs[3]);              \
    return 0;                                                                                                \
  }

BIAS_ACT(BiasAdd, 1, false)
BIAS_ACT(BiasRelu6, 2, false)
BIAS_ACT(BiasAddResidual, 1, true)

}  // extern "C"
#pragma GCC visibility pop

#pragma GCC visibility push(default)  // the entry points; everything else is hidden (-fvisibility=hidden)
extern "C" {

// Sets the kernels' team (team.h): its size, if it does not exist yet (threads > 0; later calls
// cannot resize it), and how long (microseconds) an idle worker spins before it sleeps (spin_us >= 0).
// Returns the team's size. Called through ctypes by mindcv_mnv2.ops before the first kernel runs.
int Mnv2TeamConfigure(int threads, int64_t spin_us) {
  if (threads > 0) mnv2::Team::requested_size().store(threads);
  mnv2::Team &team = mnv2::Team::get();
  if (spin_us >= 0) team.spin_ns().store(spin_us * 1000);
  return team.size();
}

}  // extern "C"
#pragma GCC visibility pop
