// Momentum SGD with per-parameter weight decay over every parameter in one call, for MindSpore's
// AOT custom operators on CPU (mindcv_mnv2/ops/momentum.py). nn.Momentum runs one ApplyMomentum per
// parameter, and its weight decay a Mul and an AddN per decayed one: MobileNetV2's 158 parameters
// made ~260 small kernels per step, which this one operator made 5-6% of the CPU demo's step.
// Per element, in nn.Momentum's order and float32 rounding:
//   g = w * wd + grad (wd > 0 only);  m = m * momentum + g;  w = w - lr * m
// Each element is updated by one thread: results do not depend on the thread count.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "dw_plane.h"
#include "team.h"

namespace {

using mnv2::check_f32;

// Work is cut into pieces of at most this many elements, so one large layer (the classifier) is
// shared between threads and the many small ones are grouped.
constexpr int64_t PIECE = 1 << 14;

}  // namespace

#pragma GCC visibility push(default)  // the entry points; everything else is hidden (-fvisibility=hidden)
extern "C" {

// inputs: lr (1), momentum (1), weight_decay (P), then P gradients, P weights, P moments (weights and
// moments updated in place); output: done (1), 1.0 once every update is written.
int MomentumApplyAll(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                     void *extra) {
  if (nparam < 5 || (nparam - 4) % 3 != 0) return 1;
  if (check_f32(nparam, dtypes)) return 2;
  const int64_t p = (nparam - 4) / 3;
  if (shapes[2][0] != p) return 3;
  const float lr = *static_cast<const float *>(params[0]), mom = *static_cast<const float *>(params[1]);
  const float *wd = static_cast<const float *>(params[2]);
  std::vector<int64_t> size(p);
  std::vector<std::pair<int64_t, int64_t>> pieces;  // (parameter, first element)
  for (int64_t i = 0; i < p; ++i) {
    int64_t n = 1;
    for (int d = 0; d < ndims[3 + i]; ++d) n *= shapes[3 + i][d];
    for (const int64_t k : {p, 2 * p}) {  // its weight and moment have its gradient's shape
      int64_t m = 1;
      for (int d = 0; d < ndims[3 + k + i]; ++d) m *= shapes[3 + k + i][d];
      if (m != n) return 3;
    }
    size[i] = n;
    for (int64_t s = 0; s < n; s += PIECE) pieces.emplace_back(i, s);
  }
  const int64_t count = static_cast<int64_t>(pieces.size());
  mnv2::parallel_for(count, [&](int64_t q) {
    const int64_t i = pieces[q].first, s = pieces[q].second, e = std::min(size[i], s + PIECE);
    const float *g = static_cast<const float *>(params[3 + i]);
    float *w = static_cast<float *>(params[3 + p + i]), *m = static_cast<float *>(params[3 + 2 * p + i]);
    const float decay = wd[i];
    if (decay > 0.f) {
      for (int64_t j = s; j < e; ++j) {
        const float gj = w[j] * decay + g[j];
        m[j] = m[j] * mom + gj;
        w[j] = w[j] - lr * m[j];
      }
    } else {
      for (int64_t j = s; j < e; ++j) {
        m[j] = m[j] * mom + g[j];
        w[j] = w[j] - lr * m[j];
      }
    }
  }, count > 1);
  *static_cast<float *>(params[nparam - 1]) = 1.f;
  return 0;
}

}  // extern "C"
#pragma GCC visibility pop
