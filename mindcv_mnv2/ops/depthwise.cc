// Depthwise 3x3 convolution (NCHW, float32, no bias; stride S in {1, 2}, dilation D in {1, 2, 4},
// padding D so that the output is ceil(input / S)) for MindSpore's AOT custom operators on CPU:
// forward, input gradient and weight gradient; for inference with BatchNorm folded, a forward with
// bias (+ ReLU6) and a per-channel bias (+ ReLU6, + residual) epilogue for 1x1 convolutions.
// Signature documented for ops.Custom(func_type="aot"):
//   int Name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
//            void *stream, void *extra)
// params = inputs then outputs. Built at run time by mindcv_mnv2/ops/depthwise.py
// (g++ -O3 -march=native -fopenmp -shared -fPIC). Each output element is computed by one thread in
// a fixed order, so results are deterministic (data-parallel ranks stay bit-identical).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Copy one HxW plane into a zero-bordered (H+2D)x(W+2D) buffer: the loops then need no bounds checks.
template <int D>
inline void pad_plane(const float *src, int64_t h, int64_t w, float *dst) {
  const int64_t pw = w + 2 * D;
  std::memset(dst, 0, sizeof(float) * pw * D);
  for (int64_t y = 0; y < h; ++y) {
    float *row = dst + (y + D) * pw;
    std::memset(row, 0, sizeof(float) * D);
    std::memcpy(row + D, src + y * w, sizeof(float) * w);
    std::memset(row + D + w, 0, sizeof(float) * D);
  }
  std::memset(dst + (h + D) * pw, 0, sizeof(float) * pw * D);
}

// ACT: 0 = none, 1 = + bias, 2 = + bias then ReLU6 (inference with BatchNorm folded into w and bias).
template <int S, int D, int ACT = 0>
void forward(const float *x, const float *wt, float *y, int64_t n, int64_t c, int64_t h, int64_t w,
             int64_t oh, int64_t ow, const float *bias = nullptr) {
#pragma omp parallel
  {
    const int64_t pw = w + 2 * D;
    std::vector<float> pad((h + 2 * D) * pw);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < n * c; ++p) {
      const float *k = wt + (p % c) * 9;
      const float b = ACT ? bias[p % c] : 0.f;
      pad_plane<D>(x + p * h * w, h, w, pad.data());
      float *out = y + p * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy) {
        const float *r0 = pad.data() + (oy * S) * pw;
        const float *r1 = r0 + D * pw;
        const float *r2 = r1 + D * pw;
        float *o = out + oy * ow;
#pragma omp simd
        for (int64_t ox = 0; ox < ow; ++ox) {
          const int64_t ix = ox * S;
          float v = k[0] * r0[ix] + k[1] * r0[ix + D] + k[2] * r0[ix + 2 * D] + k[3] * r1[ix] + k[4] * r1[ix + D] +
                    k[5] * r1[ix + 2 * D] + k[6] * r2[ix] + k[7] * r2[ix + D] + k[8] * r2[ix + 2 * D];
          if (ACT) v += b;
          if (ACT == 2) v = std::min(std::max(v, 0.f), 6.f);
          o[ox] = v;
        }
      }
    }
  }
}

template <int S, int D>
void grad_input(const float *dy, const float *wt, float *dx, int64_t n, int64_t c, int64_t h, int64_t w,
                int64_t oh, int64_t ow) {
#pragma omp parallel
  {
    const int64_t pw = w + 2 * D;
    std::vector<float> acc((h + 2 * D) * pw);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < n * c; ++p) {
      const float *k = wt + (p % c) * 9;
      std::fill(acc.begin(), acc.end(), 0.f);
      const float *g = dy + p * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy) {
        const float *gr = g + oy * ow;
        for (int ky = 0; ky < 3; ++ky) {
          float *row = acc.data() + (oy * S + ky * D) * pw;
          const float k0 = k[ky * 3], k1 = k[ky * 3 + 1], k2 = k[ky * 3 + 2];
          if (S == 1) {
#pragma omp simd
            for (int64_t ox = 0; ox < ow; ++ox) row[ox] += k0 * gr[ox];
#pragma omp simd
            for (int64_t ox = 0; ox < ow; ++ox) row[ox + D] += k1 * gr[ox];
#pragma omp simd
            for (int64_t ox = 0; ox < ow; ++ox) row[ox + 2 * D] += k2 * gr[ox];
          } else {
            for (int64_t ox = 0; ox < ow; ++ox) {
              const float v = gr[ox];
              row[ox * S] += k0 * v;
              row[ox * S + D] += k1 * v;
              row[ox * S + 2 * D] += k2 * v;
            }
          }
        }
      }
      float *out = dx + p * h * w;
      for (int64_t y = 0; y < h; ++y) std::memcpy(out + y * w, acc.data() + (y + D) * pw + D, sizeof(float) * w);
    }
  }
}

template <int S, int D>
void grad_weight(const float *x, const float *dy, float *dw, int64_t n, int64_t c, int64_t h, int64_t w,
                 int64_t oh, int64_t ow) {
#pragma omp parallel
  {
    const int64_t pw = w + 2 * D;
    std::vector<float> pad((h + 2 * D) * pw);
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < c; ++ch) {
      double sum[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};  // double: a sum over the whole batch
      for (int64_t b = 0; b < n; ++b) {
        const int64_t p = b * c + ch;
        pad_plane<D>(x + p * h * w, h, w, pad.data());
        const float *g = dy + p * oh * ow;
        for (int ky = 0; ky < 3; ++ky) {
          for (int kx = 0; kx < 3; ++kx) {
            float s = 0.f;
            for (int64_t oy = 0; oy < oh; ++oy) {
              const float *r = pad.data() + (oy * S + ky * D) * pw + kx * D;
              const float *gr = g + oy * ow;
#pragma omp simd reduction(+ : s)
              for (int64_t ox = 0; ox < ow; ++ox) s += gr[ox] * r[ox * S];
            }
            sum[ky * 3 + kx] += s;
          }
        }
      }
      for (int i = 0; i < 9; ++i) dw[ch * 9 + i] = static_cast<float>(sum[i]);
    }
  }
}

// y = x + bias[channel] (ACT 1), then ReLU6 (ACT 2), plus a residual r (RES): the epilogue of a 1x1
// convolution whose BatchNorm is folded into its weights, in one pass instead of MindSpore's 2-3.
template <int ACT, bool RES>
void bias_act(const float *x, const float *bias, const float *r, float *y, int64_t n, int64_t c, int64_t hw) {
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < n * c; ++p) {
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
  }
}

// With padding D and a 3x3 kernel dilated by D the output is ceil(in / S), whatever D is.
inline int64_t out_size(int64_t in, int s) { return (in - 1) / s + 1; }

// Non-zero (an error MindSpore reports) unless every tensor is float32: the kernels read raw floats.
inline int check_f32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return 2;
  return 0;
}

}  // namespace

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
