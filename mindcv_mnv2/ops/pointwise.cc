// Convolutions as packed matrix products with a fused epilogue, for inference with BatchNorm folded
// (NCHW, float32): the 1x1 convolutions of MobileNetV2 (y = W x per image, W Cout x Cin) and its 3x3
// stem (the same register tiles, reading their 27 rows of B in place from padded planes),
// each followed in the same pass by + bias, then ReLU6 (ACT 2), then + a residual (RES). MindSpore's
// CPU Conv2D (oneDNN on NCHW) plus a separate epilogue pass over each activation took ~2/3 of the
// folded network's time.
// A whole inverted-residual block (expand 1x1, depthwise 3x3, project 1x1 [+ input]) also runs as one
// operator, image by image, so its expanded activations stay in cache instead of going to memory.
// Signature as in depthwise.cc (MindSpore AOT custom operators). Each output element is computed by
// one thread in a fixed order: results are deterministic.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dw_plane.h"
#include "team.h"

namespace {

using mnv2::check_f32;
using mnv2::dw_planes;
using mnv2::ld;
using mnv2::st;
using mnv2::v8f;


// A store that bypasses the caches (no read of the line first): for outputs far larger than the
// caches, which the next layer reads back from memory anyway. Needs 32-byte alignment.
inline void stream(float *p, v8f v) {
#ifdef __AVX__
  __builtin_ia32_movntps256(p, v);
#else
  st(p, v);
#endif
}
inline void stream_fence() {  // each thread, after its streamed stores: make them visible to the others
#ifdef __AVX__
  __builtin_ia32_sfence();
#endif
}
constexpr int64_t STREAM_BYTES = 16 << 20;  // outputs above this bypass the caches (measured: stem 1.0@224 bs32 -10%)

// Per-thread scratch that outlives the call (the team's threads persist): allocating it per call cost
// a page fault per 4 KiB each time (glibc maps blocks over 128 KiB fresh). Contents are not cleared:
// every user writes what it reads. One slot per simultaneous use; a slot only grows.
enum Slot { A1, BIAS1, A2, BIAS2, BP, BSHARED, E, D, PAD, XT, YT, RT, TAIL, SLOTS };
inline float *scratch(Slot slot, int64_t size) {
  thread_local std::vector<float> bufs[SLOTS];
  std::vector<float> &b = bufs[slot];
  if (static_cast<int64_t>(b.size()) < size) b.resize(size);
  return b.data();
}

// Below this many multiply-adds an operator runs on the calling thread alone: waking a sleeping
// thread of the team (team.h) costs ~25-45 us, more than such work takes on one core.
constexpr int64_t SERIAL_MACS = 1 << 21;

// The register tile: MR output channels x NR output pixels, NR / VW vectors of VW floats per row. AVX-512
// (32 registers of 16 floats): 8 x 32, 16 accumulators; measured on a Zen 5 EPYC against 6 x 16, 8 x 16,
// 12 x 16, 16 x 16, 6 x 32, 10 x 32 and 12 x 32, 1.0@224 batch 32 ran 1.3-1.6x faster than with the
// AVX2 tiles. AVX2 and older (16 registers of 8 floats): 6 x 16, 12 accumulators. MobileNetV2's
// channel counts are multiples of 8, so 8 rows leave no empty ones.
#if defined(__AVX512F__)
typedef float vf __attribute__((vector_size(64)));
#ifndef MNV2_MR
#define MNV2_MR 8
#endif
#ifndef MNV2_NR
#define MNV2_NR 32
#endif
#else
typedef v8f vf;
#ifndef MNV2_MR
#define MNV2_MR 6
#endif
#ifndef MNV2_NR
#define MNV2_NR 16
#endif
#endif
constexpr int VW = sizeof(vf) / sizeof(float);
constexpr int MR = MNV2_MR;   // output channels per register tile
constexpr int NR = MNV2_NR;   // output pixels per register tile
static_assert(NR % VW == 0 && NR % 8 == 0, "a tile row is whole vectors");
inline void streamv(float *p, vf v) {  // as 8-float halves: 32-byte alignment is all the callers check
  for (int h = 0; h < VW / 8; ++h) {
    v8f part;
    std::memcpy(&part, reinterpret_cast<const float *>(&v) + 8 * h, sizeof(part));
    stream(p + 8 * h, part);
  }
}
#ifndef MNV2_IN_PLACE_K
#define MNV2_IN_PLACE_K 64
#endif
constexpr int64_t IN_PLACE_K = MNV2_IN_PLACE_K;  // see gemm_block
constexpr int64_t B_BLOCK_BYTES = 192 << 10;  // a (packed) block of B that every row panel sweeps stays in L2 (512 KiB and up)

// Pixels per packed block: long rows for the prefetcher when K is small, at least 4 strips.
constexpr int64_t MAX_BLOCK = 1024;
inline int64_t block_pixels(int64_t k) {
  // whole strips only: pack_b fills ceil(pixels / NR) strips of the block (an NR of 48 overflowed 1024)
  return std::max<int64_t>(4 * NR, std::min<int64_t>(MAX_BLOCK / NR * NR, B_BLOCK_BYTES / (4 * k) / NR * NR));
}

// Panel b of A (rows x k, row-major) packed: MR rows stored k-major (k x MR), zero rows past the last.
inline void pack_a_panel(const float *a, int64_t rows, int64_t k, int64_t b, float *ap) {
  for (int64_t kk = 0; kk < k; ++kk)
    for (int r = 0; r < MR; ++r) {
      const int64_t row = b * MR + r;
      ap[(b * k + kk) * MR + r] = row < rows ? a[row * k + kk] : 0.f;
    }
}

// Panel b of A (rows x k, row-major) read where it is, as the tiles' acol: MR row pointers, rows past
// the last repeating it (computed, never stored).
struct RowPanel {
  const float *w[MR];
  RowPanel(const float *a, int64_t rows, int64_t k, int64_t b) {
    const int64_t last = std::min<int64_t>(MR, rows - b * MR) - 1;
    for (int i = 0; i < MR; ++i) w[i] = a + (b * MR + std::min<int64_t>(i, last)) * k;
  }
  float operator()(int64_t kk, int i) const { return w[i][kk]; }
};

// A's floats from which its packing is shared among the threads: on the caller alone, packing 1.0 @ 224's
// weights was a tenth of one image's time, with the other thread waiting.
constexpr int64_t SERIAL_PACK = 1 << 14;

// The B block of pixels [p0, p0 + nc) of one image (x: k rows of p_total pixels), as strips of NR
// pixels stored k-major (k x NR); pixels past the plane are zero. Row by row of x, so reads are one
// sequential stream at a time (the prefetcher's best case).
void pack_b(const float *x, int64_t k, int64_t p_total, int64_t p0, int64_t nc, float *bp) {
  const int64_t cols = std::min<int64_t>(nc, p_total - p0), strips = (cols + NR - 1) / NR;
  for (int64_t kk = 0; kk < k; ++kk) {
    const float *src = x + kk * p_total + p0;
    for (int64_t s = 0; s < strips; ++s) {
      float *dst = bp + (s * k + kk) * NR;
      const int64_t valid = std::min<int64_t>(NR, cols - s * NR);
      if (valid == NR) {
        for (int v = 0; v < NR / 8; ++v) st(dst + 8 * v, ld(src + s * NR + 8 * v));
      } else {
        for (int64_t j = 0; j < NR; ++j) dst[j] = j < valid ? src[s * NR + j] : 0.f;
      }
    }
  }
}

// One MR x NR tile of C = A B over k, then the epilogue; rows/cols below MR/NR mark an edge tile.
// brow(kk): the NR floats of row kk of B (a packed strip, or a row of the input read in place);
// acol(kk, i): element i of column kk of A (a packed panel, or rows read in place). W < NR: a
// narrower tile (W / VW vectors per row, the first W floats of each row of B) for a row's last pixels.
template <int ACT, bool RES, class BRow, bool STREAM = false, class ACol, int W = NR>
inline void tile_cols(ACol acol, BRow brow, int64_t k, const float *bias, float *c, const float *r, int64_t ldc,
                      int rows, int cols) {
  constexpr int NV = W / VW;
  vf acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vf{};
  for (int64_t kk = 0; kk < k; ++kk) {
    const float *bk = brow(kk);
    vf b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = ld<vf>(bk + v * VW);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const float a = acol(kk, i);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += a * b[v];
    }
  }
  const vf zero{}, six = zero + 6.f;
  if (rows == MR && cols == W) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        vf y = acc[i][v] + bias[i];
        if (ACT == 2) {
          y = y < zero ? zero : y;  // lane-wise selects: NaN passes through as in MindSpore's ReLU6
          y = y > six ? six : y;
        }
        if (RES) y += ld<vf>(r + i * ldc + v * VW);
        if (STREAM)
          streamv(c + i * ldc + v * VW, y);
        else
          st(c + i * ldc + v * VW, y);
      }
    return;
  }
  // Unrolled with a constant row index: acc[i] indexed by a run-time row would put all the
  // accumulators on the stack (zeroed there and stored back after the k loop on every tile).
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= rows) break;
    float row[W];
    for (int v = 0; v < NV; ++v) st(row + v * VW, acc[i][v]);
    for (int j = 0; j < cols; ++j) {
      float y = row[j] + bias[i];
      if (ACT == 2) y = std::min(std::max(y, 0.f), 6.f);
      if (RES) y += r[i * ldc + j];
      c[i * ldc + j] = y;
    }
  }
}

// A tile whose A is read by acol; cols of at most VW (a row's last pixels, with NR wider than one
// vector) take the one-vector tile instead of computing a mostly empty full one.
template <int ACT, bool RES, class BRow, bool STREAM = false, class ACol>
inline void tile_acol(ACol acol, BRow brow, int64_t k, const float *bias, float *c, const float *r, int64_t ldc,
                      int rows, int cols) {
  if (NR > VW && cols <= VW)
    tile_cols<ACT, RES, BRow, STREAM, decltype(acol), VW>(acol, brow, k, bias, c, r, ldc, rows, cols);
  else
    tile_cols<ACT, RES, BRow, STREAM>(acol, brow, k, bias, c, r, ldc, rows, cols);
}

// A tile whose A is a panel packed by pack_a_panel.
template <int ACT, bool RES, class BRow, bool STREAM = false>
inline void tile_rows(const float *ap, BRow brow, int64_t k, const float *bias, float *c, const float *r,
                      int64_t ldc, int rows, int cols) {
  tile_acol<ACT, RES, BRow, STREAM>([ap](int64_t kk, int i) { return ap[kk * MR + i]; }, brow, k, bias, c, r, ldc,
                                    rows, cols);
}

template <int ACT, bool RES>
inline void tile(const float *ap, const float *bp, int64_t k, const float *bias, float *c, const float *r,
                 int64_t ldc, int rows, int cols) {
  tile_rows<ACT, RES>(ap, [bp](int64_t kk) { return bp + kk * NR; }, k, bias, c, r, ldc, rows, cols);
}

// The pixels [p0, p0 + nc) and the row panels [rb0, rb1) of one image's y (cout x p) = A x (k x p),
// then the epilogue. ap: A packed by pack_a_panel, bias padded to whole panels; with A_ROWS, A itself
// (cout x k, row-major: its rows read where they are) and its bias. bp: scratch of k * nc floats.
// With k <= IN_PLACE_K the tiles read their rows of B where they are in x (as the stem's do) and only
// a plane's last partial strip is copied, zero-padded: packing cost 3% of the inference network at
// 0.35 @ 96, most of it in the blocks' small-k expansions. Deeper B is packed: read in place, its
// k rows of 16 floats (two cache lines each when a row of x is not 64-byte aligned, as at 7x7) made
// the 7x7 blocks and the last 1x1 convolution of 1.0 @ 224 5-12% slower.
template <int ACT, bool RES, bool A_ROWS = false>
void gemm_block(const float *x, const float *ap, const float *bias, const float *res, float *y, int64_t k,
                int64_t cout, int64_t p, int64_t p0, int64_t nc, int64_t rb0, int64_t rb1, float *bp,
                bool packed = false) {
  const int64_t cols_block = std::min<int64_t>(nc, p - p0);
  const int64_t full = k <= IN_PLACE_K ? cols_block / NR : 0;  // strips read in place
  if (!packed && full * NR < cols_block) pack_b(x, k, p, p0 + full * NR, nc - full * NR, bp);
  for (int64_t b = rb0; b < rb1; ++b) {
    const int rows = static_cast<int>(std::min<int64_t>(MR, cout - b * MR));
    for (int64_t s = 0; s * NR < cols_block; ++s) {
      const int cols = static_cast<int>(std::min<int64_t>(NR, cols_block - s * NR));
      const int64_t off = b * MR * p + p0 + s * NR;
      const float *r = RES ? res + off : nullptr;
      const float *xs = x + p0 + s * NR, *bs = bp + (s - full) * k * NR;
      auto b_in_place = [xs, p](int64_t kk) { return xs + kk * p; };
      auto b_packed = [bs](int64_t kk) { return bs + kk * NR; };
      if (A_ROWS) {
        const RowPanel acol(ap, cout, k, b);
        if (s < full)
          tile_acol<ACT, RES>(acol, b_in_place, k, bias + b * MR, y + off, r, p, rows, cols);
        else
          tile_acol<ACT, RES>(acol, b_packed, k, bias + b * MR, y + off, r, p, rows, cols);
      } else if (s < full) {
        tile_rows<ACT, RES>(ap + b * MR * k, b_in_place, k, bias + b * MR, y + off, r, p, rows, cols);
      } else {
        tile<ACT, RES>(ap + b * MR * k, bs, k, bias + b * MR, y + off, r, p, rows, cols);
      }
    }
  }
}

// One image, one thread: y (cout x p) = epilogue(A x (k x p)).
template <int ACT, bool RES>
void gemm_image(const float *x, const float *ap, const float *bias, const float *res, float *y, int64_t k,
                int64_t p, int64_t cout, float *bp) {
  const int64_t nc = block_pixels(k), rb = (cout + MR - 1) / MR;
  for (int64_t p0 = 0; p0 < p; p0 += nc) gemm_block<ACT, RES>(x, ap, bias, res, y, k, cout, p, p0, nc, 0, rb, bp);
}

// Weights packed for the tiles, bias padded to whole panels: once per call, shared by all threads.
struct Packed {
  const float *a = nullptr, *bias = nullptr;
  Packed() = default;
  Packed(const float *wt, const float *b, int64_t rows, int64_t k, bool second = false) {
    const int64_t rb = (rows + MR - 1) / MR;
    float *pa = scratch(second ? A2 : A1, rb * MR * k), *pb = scratch(second ? BIAS2 : BIAS1, rb * MR);
    mnv2::parallel_for(rb, [&](int64_t b) { pack_a_panel(wt, rows, k, b, pa); }, rows * k >= SERIAL_PACK);
    std::fill(pb, pb + rb * MR, 0.f);
    std::copy(b, b + rows, pb);
    a = pa;
    bias = pb;
  }
};

constexpr int64_t A_ROWS_PIXELS = 1024;  // see conv_gemm

// y (n, cout, p) = epilogue(wt (cout x k) x (n, k, p) + bias): a 1x1 convolution on all threads.
template <int ACT, bool RES>
void conv_gemm(const float *x, const float *wt, const float *bias, const float *res, float *y, int64_t n,
               int64_t k, int64_t p, int64_t cout) {
  const int64_t jb = (p + block_pixels(k) - 1) / block_pixels(k);
  // Blocks of equal size (whole strips): with one image, 3136 pixels as 1024 x 3 + 64 gave one thread
  // two full blocks and the other one and a sliver.
  const int64_t nc = ((p + jb - 1) / jb + NR - 1) / NR * NR, rb = (cout + MR - 1) / MR;
  // Few pixels in all (batch 1 at 14x14 and below): packing a panel of A costs as much as a good part of
  // its products, so the tiles read A's rows where they are (1.0 @ 224 at batch 1: 7x7 and 14x14 layers
  // 5-20% faster). On larger maps reading in place gained nothing measurable, so they keep packing.
  const bool a_rows = n * p <= A_ROWS_PIXELS;
  const Packed pk = a_rows ? Packed() : Packed(wt, bias, cout, k);
  // Split the output channels into groups when there are too few pixel blocks to keep every thread
  // busy (batch 1, 7x7 maps). Their blocks of B, where packed (k > IN_PLACE_K), are packed once first,
  // for all groups: each group packing its own copy was half as much work again as the products at 7x7.
  const int64_t want = 4 * mnv2::threads();
  const int64_t groups = std::max<int64_t>(1, std::min<int64_t>(rb, (want + n * jb - 1) / (n * jb)));
  const int64_t per_group = (rb + groups - 1) / groups;
  const bool share_b = groups > 1 && k > IN_PLACE_K, parallel = n * p * cout * k >= SERIAL_MACS;
  float *shared = share_b ? scratch(BSHARED, n * jb * k * nc) : nullptr;
  if (share_b)
    mnv2::parallel_for(n * jb, [&](int64_t q) {  // (image, pixel block)
      pack_b(x + q / jb * k * p, k, p, q % jb * nc, nc, shared + q * k * nc);
    }, parallel);
  mnv2::parallel(
      [&](int tid, int nt) {
        float *bp = share_b ? nullptr : scratch(BP, k * nc);
        mnv2::for_share(n * jb * groups, tid, nt, [&](int64_t q) {  // (image, pixel block, row group)
          const int64_t img = q / (jb * groups), j = q / groups % jb, g = q % groups;
          const float *xi = x + img * k * p, *ri = RES ? res + img * cout * p : nullptr;
          float *yi = y + img * cout * p, *bj = share_b ? shared + (img * jb + j) * k * nc : bp;
          const int64_t b0 = g * per_group, b1 = std::min(rb, (g + 1) * per_group);
          if (a_rows)
            gemm_block<ACT, RES, true>(xi, wt, bias, ri, yi, k, cout, p, j * nc, nc, b0, b1, bj, share_b);
          else
            gemm_block<ACT, RES>(xi, pk.a, pk.bias, ri, yi, k, cout, p, j * nc, nc, b0, b1, bj, share_b);
        });
      },
      parallel);
}

// (a, b, hw) -> (b, a, hw) on this thread. With a thread's images inside each channel's row, their
// pixels form one long row of B, so maps of a few pixels (7x7, 3x3) still fill whole tiles.
inline void swap_outer(const float *src, float *dst, int64_t a, int64_t b, int64_t hw) {
  for (int64_t i = 0; i < a; ++i)
    for (int64_t j = 0; j < b; ++j) std::memcpy(dst + (j * a + i) * hw, src + (i * b + j) * hw, sizeof(float) * hw);
}

// sum_j a[j] b[j] in float: 32 partial sums in four vectors (one chain would wait on each add), added
// in a fixed order, then the last k % 8 terms.
inline float dot(const float *a, const float *b, int64_t k) {
  v8f s[4] = {};
  int64_t j = 0;
  for (; j + 32 <= k; j += 32)
    for (int q = 0; q < 4; ++q) s[q] += ld(a + j + 8 * q) * ld(b + j + 8 * q);
  for (; j + 8 <= k; j += 8) s[0] += ld(a + j) * ld(b + j);
  const v8f t = (s[0] + s[1]) + (s[2] + s[3]);
  float r = ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  for (; j < k; ++j) r += a[j] * b[j];
  return r;
}
// Weights (floats) from which a matrix-vector product is shared among the threads.
constexpr int64_t SERIAL_DOT = 1 << 16;

// Pixels per map at or below which a thread batches its images (measured: a 1x1 convolution gains
// up to 7x7). A block batches its maps of SMALL_BLOCK_MAP pixels or fewer, as many images at a time
// as keep their expanded maps within BLOCK_BATCH_BYTES (in L2): the 6x6 blocks of 0.35 @ 96 ran 11-22%
// faster on 16 images at once than image by image. At 7x7 it was a wash (2 images of 1.0 @ 224: -6%,
// 6 of 0.35 @ 224: +4%), so those stay image by image.
constexpr int64_t SMALL_MAP = 64, SMALL_BLOCK_MAP = 36, BLOCK_BATCH_BYTES = 448 << 10;

// Thread t's share [i0, i1) of n images among nt (a fixed partition: results do not depend on it).
inline void my_images(int64_t n, int t, int nt, int64_t *i0, int64_t *i1) {
  *i0 = n * t / nt;
  *i1 = n * (t + 1) / nt;
}

// A 1x1 convolution with its epilogue over the batch (MindSpore's NCHW in and out).
template <int ACT, bool RES>
void pointwise(const float *x, const float *wt, const float *bias, const float *res, float *y, int64_t n,
               int64_t cin, int64_t h, int64_t w, int64_t cout) {
  const int64_t p = h * w;
  if (p > SMALL_MAP || n < mnv2::threads()) {
    conv_gemm<ACT, RES>(x, wt, bias, res, y, n, cin, h * w, cout);
    return;
  }
  const Packed pk(wt, bias, cout, cin);
  mnv2::parallel(
      [&](int tid, int nt) {
        int64_t i0, i1;
        my_images(n, tid, nt, &i0, &i1);
        const int64_t m = i1 - i0;
        float *xt = scratch(XT, m * cin * p), *rt = RES ? scratch(RT, m * cout * p) : nullptr;
        float *yt = scratch(YT, m * cout * p), *bp = scratch(BP, cin * block_pixels(cin));
        swap_outer(x + i0 * cin * p, xt, m, cin, p);
        if (RES) swap_outer(res + i0 * cout * p, rt, m, cout, p);
        gemm_image<ACT, RES>(xt, pk.a, pk.bias, rt, yt, cin, m * p, cout, bp);
        swap_outer(yt, y + i0 * cout * p, cout, m, p);
      },
      n * p * cout * cin >= SERIAL_MACS);
}

// An inverted-residual block layer by layer over the batch, every layer on all threads (fewer
// images than threads: batch 1).
template <int S, bool EXPAND, bool RES>
void ir_layers(const float *x, const float *w1, const float *b1, const float *wd, const float *bd,
               const float *w2, const float *b2, float *y, int64_t n, int64_t cin, int64_t h, int64_t w,
               int64_t hidden, int64_t cout) {
  const int64_t oh = (h - 1) / S + 1, ow = (w - 1) / S + 1, hw = h * w, ohw = oh * ow;
  float *e = EXPAND ? scratch(E, n * hidden * hw) : nullptr, *d = scratch(D, n * hidden * ohw);
  if (EXPAND) conv_gemm<2, false>(x, w1, b1, nullptr, e, n, cin, hw, hidden);
  const float *ein = EXPAND ? e : x;
  const int64_t planes = n * hidden, groups = (planes + 7) / 8;
  mnv2::parallel([&](int tid, int nt) {
    float *pad = scratch(PAD, mnv2::lanes8_scratch(h, w, 1, oh, ow));
    mnv2::for_share(groups, tid, nt, [&](int64_t g) {
      dw_planes<S>(ein, d, 8 * g, std::min(planes, 8 * g + 8), [hidden](int64_t q) { return q % hidden; }, wd, bd, h,
                   w, oh, ow, pad);
    });
  });
  conv_gemm<1, RES>(d, w2, b2, x, y, n, hidden, ohw, cout);
}

// An inverted-residual block with BatchNorm folded: relu6(W1 x + b1) [when EXPAND], relu6(dw(.) + bd)
// with stride S, then W2 (.) + b2 [+ x when RES]. With at least one image per thread (or work too
// small to share): each thread runs whole images through the three layers (its expanded planes
// stay in its caches), small maps several images at once on the (c, image, hw) layout (see
// BLOCK_BATCH_BYTES). Otherwise (batch 1) layer by layer, every layer on all threads.
template <int S, bool EXPAND, bool RES>
void ir_block(const float *x, const float *w1, const float *b1, const float *wd, const float *bd, const float *w2,
              const float *b2, float *y, int64_t n, int64_t cin, int64_t h, int64_t w, int64_t hidden,
              int64_t cout) {
  const int64_t oh = (h - 1) / S + 1, ow = (w - 1) / S + 1, hw = h * w, ohw = oh * ow;
  const bool serial = n * ((EXPAND ? cin * hidden * hw : 0) + hidden * 9 * ohw + hidden * cout * ohw) < SERIAL_MACS;
  if (n < mnv2::threads() && !serial) {
    ir_layers<S, EXPAND, RES>(x, w1, b1, wd, bd, w2, b2, y, n, cin, h, w, hidden, cout);
    return;
  }
  Packed p1;  // the expansion layer's weights; a block without one has nothing to pack
  if (EXPAND) p1 = Packed(w1, b1, hidden, cin);
  const Packed p2(w2, b2, cout, hidden, true);
  const int64_t batch = std::max<int64_t>(1, BLOCK_BATCH_BYTES / (4 * hidden * hw));  // images at a time
  if (hw <= SMALL_BLOCK_MAP && batch > 1) {  // each thread: its images in chunks, on the (c, image, hw) layout
    mnv2::parallel(
        [&](int tid, int nt) {
          int64_t i0, i1;
          my_images(n, tid, nt, &i0, &i1);
          const int64_t mc = std::min(batch, i1 - i0);
          float *xt = scratch(XT, mc * cin * hw), *e = EXPAND ? scratch(E, mc * hidden * hw) : nullptr;
          float *d = scratch(D, mc * hidden * ohw), *yt = scratch(YT, mc * cout * ohw);
          float *pad = scratch(PAD, mnv2::lanes8_scratch(h, w, 1, oh, ow));
          float *bp = scratch(BP, std::max(cin * block_pixels(cin), hidden * block_pixels(hidden)));
          for (int64_t c0 = i0; c0 < i1; c0 += mc) {
            const int64_t m = std::min(mc, i1 - c0);
            swap_outer(x + c0 * cin * hw, xt, m, cin, hw);
            if (EXPAND) gemm_image<2, false>(xt, p1.a, p1.bias, nullptr, e, cin, m * hw, hidden, bp);
            const float *ein = EXPAND ? e : xt;
            dw_planes<S>(ein, d, 0, hidden * m, [m](int64_t q) { return q / m; }, wd, bd, h, w, oh, ow, pad);
            gemm_image<1, RES>(d, p2.a, p2.bias, RES ? xt : nullptr, yt, hidden, m * ohw, cout, bp);
            swap_outer(yt, y + c0 * cout * ohw, cout, m, ohw);
          }
        },
        !serial);
    return;
  }
  mnv2::parallel(
      [&](int tid, int nt) {
        float *e = EXPAND ? scratch(E, hidden * hw) : nullptr, *d = scratch(D, hidden * ohw);
        float *pad = scratch(PAD, mnv2::lanes8_scratch(h, w, 1, oh, ow));
        float *bp = scratch(BP, std::max(cin * block_pixels(cin), hidden * block_pixels(hidden)));
        mnv2::for_share(n, tid, nt, [&](int64_t img) {
          const float *xi = x + img * cin * hw;
          if (EXPAND) gemm_image<2, false>(xi, p1.a, p1.bias, nullptr, e, cin, hw, hidden, bp);
          const float *ein = EXPAND ? e : xi;
          dw_planes<S>(ein, d, 0, hidden, [](int64_t q) { return q; }, wd, bd, h, w, oh, ow, pad);
          gemm_image<1, RES>(d, p2.a, p2.bias, RES ? xi : nullptr, y + img * cout * ohw, hidden, ohw, cout, bp);
        });
      },
      !serial);
}

// Pad (stride 2: split into even and odd columns, as for the depthwise kernel) the cin planes of one image.
template <int S>
inline void pad_image(const float *x, int64_t cin, int64_t h, int64_t w, float *dst) {
  const int64_t plane = (h + 2) * (w + 2);
  for (int64_t ci = 0; ci < cin; ++ci) {
    if (S == 2)
      mnv2::pad_plane_split(x + ci * h * w, h, w, dst + ci * plane);
    else
      mnv2::pad_plane<1>(x + ci * h * w, h, w, dst + ci * plane);
  }
}

// Output row oy of one image of a 3x3 convolution (padding 1) + bias then ReLU6, from its padded planes:
// the tiles read their 9 cin rows of B in place, so no patch matrix is built. rows, tail: scratch.
template <int S>
void conv3x3_row(const float *pad, const Packed &pk, float *y, int64_t cin, int64_t h, int64_t w, int64_t cout,
                 int64_t oy, const float **rows, float *tail, bool stream_out) {
  const int64_t oh = (h - 1) / S + 1, ow = (w - 1) / S + 1, pw = w + 2, plane = (h + 2) * pw, k = cin * 9;
  const int64_t ne = (pw + 1) / 2, rb = (cout + MR - 1) / MR;
  for (int64_t kk = 0; kk < k; ++kk) {
    const int64_t ci = kk / 9, ky = kk % 9 / 3, kx = kk % 3;
    const int64_t col = S == 2 ? (kx == 0 ? 0 : kx == 1 ? ne : 1) : kx;  // tap kx of output column 0
    rows[kk] = pad + ci * plane + (oy * S + ky) * pw + col;
  }
  for (int64_t ox0 = 0; ox0 < ow; ox0 += NR) {
    const int cols = static_cast<int>(std::min<int64_t>(NR, ow - ox0));
    auto brow = [&](int64_t kk) { return rows[kk] + ox0; };
    if (cols < NR)  // the row's last, partial strip: a zero-padded copy
      for (int64_t kk = 0; kk < k; ++kk)
        for (int j = 0; j < NR; ++j) tail[kk * NR + j] = j < cols ? rows[kk][ox0 + j] : 0.f;
    for (int64_t b = 0; b < rb; ++b) {
      const int nrows = static_cast<int>(std::min<int64_t>(MR, cout - b * MR));
      float *out = y + b * MR * oh * ow + oy * ow + ox0;
      if (cols == NR && stream_out && reinterpret_cast<uintptr_t>(out) % 32 == 0 && ow % 8 == 0)
        tile_rows<2, false, decltype(brow), true>(pk.a + b * MR * k, brow, k, pk.bias + b * MR, out,
                                                  nullptr, oh * ow, nrows, cols);
      else if (cols == NR)
        tile_rows<2, false>(pk.a + b * MR * k, brow, k, pk.bias + b * MR, out, nullptr, oh * ow, nrows,
                            cols);
      else
        tile<2, false>(pk.a + b * MR * k, tail, k, pk.bias + b * MR, out, nullptr, oh * ow, nrows,
                       cols);
    }
  }
}

// A 3x3 convolution, padding 1 (MobileNetV2's stem), + bias then ReLU6, over the batch: image by
// image per thread (its padded planes stay in cache), or row by row when there are fewer images.
template <int S>
void conv3x3(const float *x, const float *wt, const float *bias, float *y, int64_t n, int64_t cin, int64_t h,
             int64_t w, int64_t cout) {
  const int64_t oh = (h - 1) / S + 1, ow = (w - 1) / S + 1, plane = (h + 2) * (w + 2), k = cin * 9;
  const Packed pk(wt, bias, cout, k);
  const bool big = n * cout * oh * ow * 4 > STREAM_BYTES, serial = n * oh * ow * cout * k < SERIAL_MACS;
  if (n >= mnv2::threads() || serial) {
    mnv2::parallel(
        [&](int tid, int nt) {
          float *pad = scratch(PAD, cin * plane), *tail = scratch(TAIL, k * NR);
          std::vector<const float *> rows(k);
          mnv2::for_share(n, tid, nt, [&](int64_t img) {
            pad_image<S>(x + img * cin * h * w, cin, h, w, pad);
            for (int64_t oy = 0; oy < oh; ++oy)
              conv3x3_row<S>(pad, pk, y + img * cout * oh * ow, cin, h, w, cout, oy, rows.data(), tail, big);
          });
          stream_fence();
        },
        !serial);
    return;
  }
  float *pad = scratch(XT, n * cin * plane);  // (the master's XT slot: PAD is a worker slot here)
  for (int64_t img = 0; img < n; ++img) pad_image<S>(x + img * cin * h * w, cin, h, w, pad + img * cin * plane);
  mnv2::parallel([&](int tid, int nt) {
    float *tail = scratch(TAIL, k * NR);
    std::vector<const float *> rows(k);
    mnv2::for_share(n * oh, tid, nt, [&](int64_t q) {  // (image, output row)
      const int64_t img = q / oh, oy = q % oh;
      conv3x3_row<S>(pad + img * cin * plane, pk, y + img * cout * oh * ow, cin, h, w, cout, oy, rows.data(), tail,
                     big);
    });
    stream_fence();
  });
}

}  // namespace

#pragma GCC visibility push(default)  // the entry points; everything else is hidden (-fvisibility=hidden)
extern "C" {

// inputs: x (N,Cin,H,W), w (Cout,Cin,1,1), bias (Cout) [, residual (N,Cout,H,W)]; output y (N,Cout,H,W)
#define PW_CONV(NAME, ACT, RES)                                                                                \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != (RES ? 5 : 4) || ndims[0] != 4 || ndims[1] != 4) return 1;                                  \
    if (check_f32(nparam, dtypes)) return 2;                                                                 \
    const int64_t *xs = shapes[0], *ws = shapes[1];                                                          \
    if (ws[1] != xs[1] || ws[2] != 1 || ws[3] != 1) return 3;                                                \
    pointwise<ACT, RES>(static_cast<float *>(params[0]), static_cast<float *>(params[1]),                     \
                        static_cast<float *>(params[2]), RES ? static_cast<float *>(params[3]) : nullptr,      \
                        static_cast<float *>(params[RES ? 4 : 3]), xs[0], xs[1], xs[2], xs[3], ws[0]);         \
    return 0;                                                                                                \
  }

PW_CONV(PwConvBias, 1, false)
PW_CONV(PwConvBiasRelu6, 2, false)
PW_CONV(PwConvBiasResidual, 1, true)

// inputs: x (N,Cin,H,W), w (Cout,Cin,3,3), bias (Cout); output y (N,Cout,ceil(H/S),ceil(W/S)): padding 1
#define CONV3X3(NAME, S)                                                                                  \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    if (nparam != 4 || ndims[0] != 4 || ndims[1] != 4) return 1;                                              \
    if (check_f32(nparam, dtypes)) return 2;                                                                 \
    const int64_t *xs = shapes[0], *ws = shapes[1];                                                          \
    if (ws[1] != xs[1] || ws[2] != 3 || ws[3] != 3) return 3;                                                \
    conv3x3<S>(static_cast<float *>(params[0]), static_cast<float *>(params[1]), static_cast<float *>(params[2]), \
               static_cast<float *>(params[3]), xs[0], xs[1], xs[2], xs[3], ws[0]);                           \
    return 0;                                                                                                \
  }

CONV3X3(Conv3x3BiasRelu6S1, 1)
CONV3X3(Conv3x3BiasRelu6S2, 2)

}  // extern "C"
#pragma GCC visibility pop

#pragma GCC visibility push(default)  // the entry points; everything else is hidden (-fvisibility=hidden)
extern "C" {

// inputs: x (N,Cin,H,W), [w1 (Hid,Cin,1,1), b1 (Hid),] wd (Hid,1,3,3), bd (Hid), w2 (Cout,Hid,1,1), b2 (Cout);
// output y (N,Cout,ceil(H/S),ceil(W/S)). Without expansion Hid = Cin.
#define IR_BLOCK(NAME, S, EXPAND, RES)                                                                         \
  int NAME(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,        \
           void *extra) {                                                                                    \
    const int np = EXPAND ? 8 : 6;                                                                           \
    if (nparam != np || ndims[0] != 4) return 1;                                                             \
    if (check_f32(nparam, dtypes)) return 2;                                                                 \
    float *const *f = reinterpret_cast<float *const *>(params);                                              \
    const int64_t *xs = shapes[0], *w2s = shapes[np - 3];                                                    \
    const int64_t hidden = shapes[EXPAND ? 3 : 1][0];                                                        \
    if ((EXPAND && shapes[1][1] != xs[1]) || (!EXPAND && hidden != xs[1]) || w2s[1] != hidden) return 3;      \
    if (RES && (S != 1 || w2s[0] != xs[1])) return 3;                                                        \
    const int o = EXPAND ? 2 : 0;                                                                            \
    ir_block<S, EXPAND, RES>(f[0], EXPAND ? f[1] : nullptr, EXPAND ? f[2] : nullptr, f[o + 1], f[o + 2],     \
                             f[o + 3], f[o + 4], f[np - 1], xs[0], xs[1], xs[2], xs[3], hidden, w2s[0]);     \
    return 0;                                                                                                \
  }

// inputs: x (N,C,H,W), w (O,C), b (O); output y (N,O) = mean over H x W of x, then w . + b: the global
// average pool (summed in double, in a fixed order) and the classifier in one operator. With a few
// images, a matrix-vector product per image (each weight row read once for all of them); with more,
// the pooled batch is the B of one matrix product whose A, the weights, the tiles read in place
// (packing 1000 x 1280 weights took half the head's time).
int PoolDense(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
              void *extra) {
  if (nparam != 4 || ndims[0] != 4 || ndims[1] != 2) return 1;
  if (check_f32(nparam, dtypes)) return 2;
  const int64_t n = shapes[0][0], c = shapes[0][1], hw = shapes[0][2] * shapes[0][3], o = shapes[1][0];
  if (shapes[1][1] != c) return 3;
  const float *x = static_cast<float *>(params[0]), *wt = static_cast<float *>(params[1]);
  const float *bias = static_cast<float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const bool few = n < 4;              // a wide tile would be mostly empty columns
  float *pooled = scratch(XT, n * c);  // few: (n, c), one row per image; else (c, n), the B of the product
  const bool serial = n * c * (hw + o) < SERIAL_MACS;
  mnv2::parallel_for(n * c, [&](int64_t i) {
    const float *xi = x + i * hw;
    double s[4] = {0.0, 0.0, 0.0, 0.0};  // four chains: one would wait on each add's latency
    int64_t j = 0;
    for (; j + 4 <= hw; j += 4)
      for (int q = 0; q < 4; ++q) s[q] += xi[j + q];
    for (; j < hw; ++j) s[0] += xi[j];
    pooled[few ? i : (i % c) * n + i / c] =
        static_cast<float>(((s[0] + s[1]) + (s[2] + s[3])) / static_cast<double>(hw));
  }, !serial);
  if (few) {
    // Scalar double dot products here took 1.2 ms of the 2.0 ms that 0.35 @ 96 spent on one image.
    // Shared by row: the weights (5 MB at 1000 x 1280) are what the two threads wait for.
    mnv2::parallel_for(o, [&](int64_t row) {
      for (int64_t img = 0; img < n; ++img)
        y[img * o + row] = bias[row] + dot(wt + row * c, pooled + img * c, c);
    }, o * c >= SERIAL_DOT);
    return 0;
  }
  const int64_t strips = (n + NR - 1) / NR, rb = (o + MR - 1) / MR;
  float *bp = scratch(BP, c * strips * NR), *yt = scratch(YT, o * n);
  pack_b(pooled, c, n, 0, n, bp);
  mnv2::parallel_for(rb, [&](int64_t b) {
    const int rows = static_cast<int>(std::min<int64_t>(MR, o - b * MR));
    const RowPanel acol(wt, o, c, b);
    for (int64_t s = 0; s < strips; ++s) {
      const int cols = static_cast<int>(std::min<int64_t>(NR, n - s * NR));
      const float *bs = bp + s * c * NR;
      tile_cols<1, false>(acol, [bs](int64_t kk) { return bs + kk * NR; },
                          c, bias + b * MR, yt + b * MR * n + s * NR, nullptr, n, rows, cols);
    }
  }, !serial);
  for (int64_t img = 0; img < n; ++img)
    for (int64_t row = 0; row < o; ++row) y[img * o + row] = yt[row * n + img];
  return 0;
}

IR_BLOCK(IrBlockS1, 1, true, false)
IR_BLOCK(IrBlockS2, 2, true, false)
IR_BLOCK(IrBlockS1Res, 1, true, true)
IR_BLOCK(IrBlockNoExpandS1, 1, false, false)

}  // extern "C"
#pragma GCC visibility pop
