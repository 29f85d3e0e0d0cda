// Depthwise 3x3 convolution (NCHW, float32, padding 1, stride 1 or 2, no bias) for MindSpore's
// AOT custom operators on CPU: forward, input gradient and weight gradient.
// Signature documented for ops.Custom(func_type="aot"):
//   int Name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
//            void *stream, void *extra)
// params = inputs then outputs. Built at run time by mindcv_mnv2/ops/depthwise.py
// (g++ -O3 -march=native -fopenmp -shared -fPIC). Each output element is computed by one thread in
// a fixed order, so results are deterministic (data-parallel ranks stay bit-identical).
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Copy one HxW plane into a zero-bordered (H+2)x(W+2) buffer.
inline void pad_plane(const float *src, int64_t h, int64_t w, float *dst) {
  const int64_t pw = w + 2;
  std::memset(dst, 0, sizeof(float) * pw);
  for (int64_t y = 0; y < h; ++y) {
    float *row = dst + (y + 1) * pw;
    row[0] = 0.f;
    std::memcpy(row + 1, src + y * w, sizeof(float) * w);
    row[w + 1] = 0.f;
  }
  std::memset(dst + (h + 1) * pw, 0, sizeof(float) * pw);
}

template <int S>
void forward(const float *x, const float *wt, float *y, int64_t n, int64_t c, int64_t h, int64_t w,
             int64_t oh, int64_t ow) {
#pragma omp parallel
  {
    std::vector<float> pad((h + 2) * (w + 2));
#pragma omp for schedule(static)
    for (int64_t p = 0; p < n * c; ++p) {
      const float *k = wt + (p % c) * 9;
      pad_plane(x + p * h * w, h, w, pad.data());
      float *out = y + p * oh * ow;
      const int64_t pw = w + 2;
      for (int64_t oy = 0; oy < oh; ++oy) {
        const float *r0 = pad.data() + (oy * S) * pw;
        const float *r1 = r0 + pw;
        const float *r2 = r1 + pw;
        float *o = out + oy * ow;
#pragma omp simd
        for (int64_t ox = 0; ox < ow; ++ox) {
          const int64_t ix = ox * S;
          o[ox] = k[0] * r0[ix] + k[1] * r0[ix + 1] + k[2] * r0[ix + 2] + k[3] * r1[ix] + k[4] * r1[ix + 1] +
                  k[5] * r1[ix + 2] + k[6] * r2[ix] + k[7] * r2[ix + 1] + k[8] * r2[ix + 2];
        }
      }
    }
  }
}

template <int S>
void grad_input(const float *dy, const float *wt, float *dx, int64_t n, int64_t c, int64_t h, int64_t w,
                int64_t oh, int64_t ow) {
#pragma omp parallel
  {
    const int64_t pw = w + 2;
    std::vector<float> acc((h + 2) * pw);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < n * c; ++p) {
      const float *k = wt + (p % c) * 9;
      std::fill(acc.begin(), acc.end(), 0.f);
      const float *g = dy + p * oh * ow;
      for (int64_t oy = 0; oy < oh; ++oy) {
        const float *gr = g + oy * ow;
        for (int ky = 0; ky < 3; ++ky) {
          float *row = acc.data() + (oy * S + ky) * pw;
          const float k0 = k[ky * 3], k1 = k[ky * 3 + 1], k2 = k[ky * 3 + 2];
          if (S == 1) {
#pragma omp simd
            for (int64_t ox = 0; ox < ow; ++ox) row[ox] += k0 * gr[ox];
#pragma omp simd
            for (int64_t ox = 0; ox < ow; ++ox) row[ox + 1] += k1 * gr[ox];
#pragma omp simd
            for (int64_t ox = 0; ox < ow; ++ox) row[ox + 2] += k2 * gr[ox];
          } else {
            for (int64_t ox = 0; ox < ow; ++ox) {
              const float v = gr[ox];
              row[ox * S] += k0 * v;
              row[ox * S + 1] += k1 * v;
              row[ox * S + 2] += k2 * v;
            }
          }
        }
      }
      float *out = dx + p * h * w;
      for (int64_t y = 0; y < h; ++y) std::memcpy(out + y * w, acc.data() + (y + 1) * pw + 1, sizeof(float) * w);
    }
  }
}

template <int S>
void grad_weight(const float *x, const float *dy, float *dw, int64_t n, int64_t c, int64_t h, int64_t w,
                 int64_t oh, int64_t ow) {
#pragma omp parallel
  {
    const int64_t pw = w + 2;
    std::vector<float> pad((h + 2) * pw);
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < c; ++ch) {
      double sum[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t b = 0; b < n; ++b) {
        const int64_t p = b * c + ch;
        pad_plane(x + p * h * w, h, w, pad.data());
        const float *g = dy + p * oh * ow;
        for (int ky = 0; ky < 3; ++ky) {
          for (int kx = 0; kx < 3; ++kx) {
            float s = 0.f;
            for (int64_t oy = 0; oy < oh; ++oy) {
              const float *r = pad.data() + (oy * S + ky) * pw + kx;
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

inline int64_t out_size(int64_t in, int s) { return (in + 2 - 3) / s + 1; }

// Non-zero (an error MindSpore reports) unless every tensor is float32: the kernels read raw floats.
inline int check_f32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return 2;
  return 0;
}

}  // namespace

extern "C" {

// inputs: x (N,C,H,W), w (C,1,3,3); output: y (N,C,OH,OW)
#define DW_FORWARD(NAME, S)                                                                                  \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != 3 || ndims[0] != 4) return 1;                                                              \
    if (check_f32(nparam, dtypes)) return 2;                                                              \
    const int64_t *xs = shapes[0];                                                                           \
    forward<S>(static_cast<float *>(params[0]), static_cast<float *>(params[1]), static_cast<float *>(params[2]), \
               xs[0], xs[1], xs[2], xs[3], out_size(xs[2], S), out_size(xs[3], S));                          \
    return 0;                                                                                                \
  }
// inputs: x (shape only), w, dy; output: dx (N,C,H,W)
#define DW_GRAD_INPUT(NAME, S)                                                                               \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != 4) return 1;                                                                               \
    if (check_f32(nparam, dtypes)) return 2;                                                                               \
    const int64_t *xs = shapes[0];                                                                           \
    grad_input<S>(static_cast<float *>(params[2]), static_cast<float *>(params[1]),                          \
                  static_cast<float *>(params[3]), xs[0], xs[1], xs[2], xs[3], shapes[2][2], shapes[2][3]);  \
    return 0;                                                                                                \
  }
// inputs: x, dy; output: dw (C,1,3,3)
#define DW_GRAD_WEIGHT(NAME, S)                                                                              \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != 3) return 1;                                                                               \
    if (check_f32(nparam, dtypes)) return 2;                                                                               \
    const int64_t *xs = shapes[0];                                                                           \
    grad_weight<S>(static_cast<float *>(params[0]), static_cast<float *>(params[1]),                         \
                   static_cast<float *>(params[2]), xs[0], xs[1], xs[2], xs[3], shapes[1][2], shapes[1][3]); \
    return 0;                                                                                                \
  }

DW_FORWARD(DwForwardS1, 1)
DW_FORWARD(DwForwardS2, 2)
DW_GRAD_INPUT(DwGradInputS1, 1)
DW_GRAD_INPUT(DwGradInputS2, 2)
DW_GRAD_WEIGHT(DwGradWeightS1, 1)
DW_GRAD_WEIGHT(DwGradWeightS2, 2)

}  // extern "C"
