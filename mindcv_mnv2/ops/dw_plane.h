// Depthwise 3x3 on one plane, shared by depthwise.cc (per-layer kernels) and pointwise.cc (the fused
// inverted-residual block): stride S, dilation D, padding D, and the folded-BatchNorm epilogue ACT
// (0 none, 1 + bias, 2 + bias then ReLU6). Header-only: both files are one library's sources, and
// its check_f32 serves batchnorm.cc and momentum.cc too.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

namespace mnv2 {

typedef float v8f __attribute__((vector_size(32)));  // one AVX register (two SSE ones on older CPUs)

template <class V = v8f>
inline V ld(const float *p) {  // unaligned load (of any float vector type: pointwise.cc's tiles use 16-wide)
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <class V>
inline void st(float *p, V v) { std::memcpy(p, &v, sizeof(v)); }

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

typedef int v8i __attribute__((vector_size(32)));
typedef double v4d __attribute__((vector_size(32)));
typedef long long v4l __attribute__((vector_size(32)));

// The even (ODD = 0) or odd lanes of a then b: within each 128-bit half first (one vshufps), then the
// 64-bit pairs in order (one vpermpd). A general two-source shuffle took two cross-lane permutes and a
// blend per output here, and made this split cost as much as the depthwise arithmetic it feeds.
template <int ODD>
inline v8f deinterleave(v8f a, v8f b) {
  const v8i lanes = {ODD, 2 + ODD, 8 + ODD, 10 + ODD, 4 + ODD, 6 + ODD, 12 + ODD, 14 + ODD};
  const v8f t = __builtin_shuffle(a, b, lanes);  // a0 a2 b0 b2 a4 a6 b4 b6 (ODD: a1 a3 ...)
  v4d d;
  std::memcpy(&d, &t, sizeof(d));
  d = __builtin_shuffle(d, v4l{0, 2, 1, 3});
  v8f out;
  std::memcpy(&out, &d, sizeof(out));
  return out;
}

// Stride 2 (undilated): each zero-bordered row stored as its even columns, then its odd ones, so
// the three taps of output column ox are even[ox], odd[ox], even[ox + 1]: contiguous vector loads
// instead of strided ones (which ran at a third of the speed).
inline void pad_plane_split(const float *src, int64_t h, int64_t w, float *dst) {
  const int64_t pw = w + 2, ne = (pw + 1) / 2;
  std::memset(dst, 0, sizeof(float) * pw);
  for (int64_t y = 0; y < h; ++y) {
    float *even = dst + (y + 1) * pw, *odd = even + ne;
    const float *row = src + y * w;
    // padded column 2i is row[2i - 1] (even[i]), padded column 2i + 1 is row[2i] (odd[i])
    even[0] = 0.f;
    odd[0] = row[0];
    int64_t i = 1;
    for (; 2 * i - 1 + 16 <= w; i += 8) {  // 16 source columns -> 8 even + 8 odd
      const v8f a = ld(row + 2 * i - 1), b = ld(row + 2 * i + 7);
      st(even + i, deinterleave<0>(a, b));
      st(odd + i, deinterleave<1>(a, b));
    }
    if (i > 1 && 2 * i - 1 < w) {
      // One more full window, ending at the row's last column (or the one before) and overlapping the
      // previous one. Element by element, this part of the row made the stride-2 blocks of 0.35 @ 96
      // 7% slower (bench_kernels.py).
      const int64_t j = (w - 15) / 2;  // source columns 2j - 1 .. 2j + 14 <= w - 1
      const v8f a = ld(row + 2 * j - 1), b = ld(row + 2 * j + 7);
      st(even + j, deinterleave<0>(a, b));
      st(odd + j, deinterleave<1>(a, b));
      i = j + 8;  // left: the right border, and at most one column before it
    }
    for (int64_t j = i; j < ne; ++j) even[j] = 2 * j - 1 < w ? row[2 * j - 1] : 0.f;
    for (int64_t j = i; j < pw / 2; ++j) odd[j] = 2 * j < w ? row[2 * j] : 0.f;
  }
  std::memset(dst + (h + 1) * pw, 0, sizeof(float) * pw);
}

// out (oh x ow) = act(depthwise3x3(in (h x w), k) + b); pad holds (h + 2D) x (w + 2D) floats.
template <int S, int D, int ACT>
inline void dw_plane(const float *in, const float *k, float b, float *out, int64_t h, int64_t w, int64_t oh,
                     int64_t ow, float *pad) {
  static_assert(S == 1 || D == 1, "stride 2 is undilated");
  const int64_t pw = w + 2 * D;
  // (offset of tap kx = 0, 1, 2 within a stored row, and of the next output column)
  const int64_t ne = (pw + 1) / 2;
  const int64_t t1 = S == 2 ? ne : D, t2 = S == 2 ? 1 : 2 * D;
  if (S == 2)
    pad_plane_split(in, h, w, pad);
  else
    pad_plane<D>(in, h, w, pad);
  for (int64_t oy = 0; oy < oh; ++oy) {
    const float *r0 = pad + (oy * S) * pw;
    const float *r1 = r0 + D * pw;
    const float *r2 = r1 + D * pw;
    float *o = out + oy * ow;
#pragma omp simd
    for (int64_t ox = 0; ox < ow; ++ox) {
      float v = k[0] * r0[ox] + k[1] * r0[ox + t1] + k[2] * r0[ox + t2] + k[3] * r1[ox] + k[4] * r1[ox + t1] +
                k[5] * r1[ox + t2] + k[6] * r2[ox] + k[7] * r2[ox + t1] + k[8] * r2[ox + t2];
      if (ACT) v += b;
      if (ACT == 2) v = std::min(std::max(v, 0.f), 6.f);
      o[ox] = v;
    }
  }
}

// Maps narrower than this run 8 planes at a time with the channels in the vector lanes: a row of
// 3-14 pixels leaves most of an 8-wide vector idle and costs a plane's setup per few outputs.
constexpr int64_t NARROW = 16;

// r[i][j] <-> r[j][i]: an 8 x 8 block of floats transposed in registers (unpack, shuffle, then swap
// 128-bit halves: 24 shuffles where element by element it took 64 scalar moves and lane tests).
inline void transpose8(v8f r[8]) {
  const v8i lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
  const v8i lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const v8i lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
  v8f t[8], s[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = __builtin_shuffle(r[2 * i], r[2 * i + 1], lo);
    t[2 * i + 1] = __builtin_shuffle(r[2 * i], r[2 * i + 1], hi);
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      s[4 * i + 2 * j] = __builtin_shuffle(t[4 * i + j], t[4 * i + j + 2], lo2);
      s[4 * i + 2 * j + 1] = __builtin_shuffle(t[4 * i + j], t[4 * i + j + 2], hi2);
    }
  for (int i = 0; i < 4; ++i) {
    r[i] = __builtin_shuffle(s[i], s[i + 4], lo4);
    r[i + 4] = __builtin_shuffle(s[i], s[i + 4], hi4);
  }
}

// Between planes (plane l at p + l*h*w, l < lanes) and the lanes of a (h + 2d) x (w + 2d) x 8 buffer
// (pixel (y, x) of plane l at b + 8 * ((y + d) * (w + 2d) + x + d) + l), 8 pixels at a time through
// transpose8. TO_LANES: in = planes, out = buffer, lanes past the last plane zero, the d-wide border
// left as it is. Otherwise in = buffer, out = planes, lanes past the last plane dropped.
template <bool TO_LANES>
inline void lanes8_copy(const float *in, float *out, int lanes, int64_t h, int64_t w, int64_t d) {
  const int64_t pw = w + 2 * d, hw = h * w;
  int64_t y = 0, x = 0;  // of pixel p
  auto at = [&]() { return 8 * ((y + d) * pw + x + d); };
  auto next = [&]() {
    if (++x == w) {
      x = 0;
      ++y;
    }
  };
  int64_t p = 0;
  for (; p + 8 <= hw; p += 8) {
    v8f r[8];
    if (TO_LANES) {
      for (int l = 0; l < 8; ++l) r[l] = l < lanes ? ld(in + l * hw + p) : v8f{};
      transpose8(r);
      for (int k = 0; k < 8; ++k, next()) st(out + at(), r[k]);
    } else {
      for (int k = 0; k < 8; ++k, next()) r[k] = ld(in + at());
      transpose8(r);
      for (int l = 0; l < lanes; ++l) st(out + l * hw + p, r[l]);
    }
  }
  for (; p < hw; ++p, next())
    for (int l = 0; l < 8; ++l) {
      if (TO_LANES)
        out[at() + l] = l < lanes ? in[l * hw + p] : 0.f;
      else if (l < lanes)
        out[l * hw + p] = in[at() + l];
    }
}

// Planes src, src + h*w, ... (lanes <= 8 of them) of h x w into the lanes of a (h + 2D) x (w + 2D) x 8
// buffer, plane l in lane l, lanes past the last plane zero; the D-wide border is left as it is.
inline void to_lanes8(const float *src, int lanes, int64_t h, int64_t w, int64_t d, float *dst) {
  lanes8_copy<true>(src, dst, lanes, h, w, d);
}

// The inverse of to_lanes8: the interior of a (h + 2d) x (w + 2d) x 8 buffer's first `lanes` lanes into planes.
inline void from_lanes8(const float *src, int lanes, int64_t h, int64_t w, int64_t d, float *dst) {
  lanes8_copy<false>(src, dst, lanes, h, w, d);
}

// Floats of scratch that dw_lanes8 needs: the zero-bordered input and the output, 8 lanes each
// (also enough for dw_plane's one padded plane).
inline int64_t lanes8_scratch(int64_t h, int64_t w, int64_t d, int64_t oh, int64_t ow) {
  return 8 * ((h + 2 * d) * (w + 2 * d) + oh * ow);
}

// The nine taps of planes q0 .. q0 + lanes - 1 (plane q's kernel: that of channel ch(q), at wd + 9 ch(q))
// as nine vectors, plane l's tap t in lane l of kv[t]; lanes past the last plane zero.
template <class Ch>
inline void taps_to_lanes8(const float *wd, int64_t q0, int lanes, Ch ch, v8f kv[9]) {
  for (int t = 0; t < 9; ++t) kv[t] = v8f{};
  for (int l = 0; l < lanes; ++l)
    for (int t = 0; t < 9; ++t) kv[t][l] = wd[ch(q0 + l) * 9 + t];
}

// act(depthwise3x3(.)) (stride S, dilation and padding D; ACT as dw_plane's) of planes q0 .. q0 + lanes - 1
// (lanes <= 8) of a stack (plane q at in + q*h*w, out + q*oh*ow; its kernel (and bias) those of channel
// ch(q)), with plane i in vector lane i. pad holds lanes8_scratch(h, w, D, oh, ow) floats.
template <int S, int D, int ACT, class Ch>
inline void dw_lanes8(const float *in, float *out, int64_t q0, int lanes, Ch ch, const float *wd, const float *bd,
                      int64_t h, int64_t w, int64_t oh, int64_t ow, float *pad) {
  static_assert(S == 1 || D == 1, "stride 2 is undilated");
  const int64_t pw = w + 2 * D;
  std::memset(pad, 0, sizeof(float) * 8 * pw * D);
  std::memset(pad + 8 * (h + D) * pw, 0, sizeof(float) * 8 * pw * D);
  v8f kv[9], bv{};
  taps_to_lanes8(wd, q0, lanes, ch, kv);
  if (ACT)
    for (int l = 0; l < lanes; ++l) bv[l] = bd[ch(q0 + l)];
  for (int64_t y = 0; y < h; ++y) {
    float *row = pad + 8 * (y + D) * pw;
    std::memset(row, 0, sizeof(float) * 8 * D);
    std::memset(row + 8 * (w + D), 0, sizeof(float) * 8 * D);
  }
  to_lanes8(in + q0 * h * w, lanes, h, w, D, pad);
  float *res = pad + 8 * (h + 2 * D) * pw;  // the outputs, 8 lanes per pixel, until from_lanes8
  const v8f zero{}, six = zero + 6.f;
  for (int64_t oy = 0; oy < oh; ++oy)
    for (int64_t ox = 0; ox < ow; ++ox) {
      v8f acc = bv;
      for (int ky = 0; ky < 3; ++ky) {
        const float *r = pad + 8 * ((oy * S + ky * D) * pw + ox * S);
        acc += kv[ky * 3] * ld(r) + kv[ky * 3 + 1] * ld(r + 8 * D) + kv[ky * 3 + 2] * ld(r + 16 * D);
      }
      if (ACT == 2) {
        acc = acc < zero ? zero : acc;
        acc = acc > six ? six : acc;
      }
      st(res + 8 * (oy * ow + ox), acc);
    }
  from_lanes8(res, lanes, oh, ow, 0, out + q0 * oh * ow);
}

// Planes [q0, q1) of a stack as in dw_lanes8 (bias, then ReLU6): plane by plane on wide maps, 8 at a
// time on narrow ones. pad holds lanes8_scratch(h, w, 1, oh, ow) floats.
template <int S, class Ch>
inline void dw_planes(const float *in, float *out, int64_t q0, int64_t q1, Ch ch, const float *wd, const float *bd,
                      int64_t h, int64_t w, int64_t oh, int64_t ow, float *pad) {
  if (w >= NARROW) {
    for (int64_t q = q0; q < q1; ++q)
      dw_plane<S, 1, 2>(in + q * h * w, wd + ch(q) * 9, bd[ch(q)], out + q * oh * ow, h, w, oh, ow, pad);
    return;
  }
  for (int64_t q = q0; q < q1; q += 8)
    dw_lanes8<S, 1, 2>(in, out, q, static_cast<int>(std::min<int64_t>(8, q1 - q)), ch, wd, bd, h, w, oh, ow, pad);
}

// Non-zero (an error MindSpore reports) unless every tensor is float32: the kernels read raw floats.
inline int check_f32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i)
    if (std::strcmp(dtypes[i], "float32") != 0) return 2;
  return 0;
}

}  // namespace mnv2
