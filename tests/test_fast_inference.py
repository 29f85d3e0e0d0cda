"""The C++ inference kernels (mindcv_mnv2.ops.folded, pointwise.cc): 1x1 and stem convolutions with
fused epilogues, and whole inverted-residual blocks, against float64 numpy on awkward shapes."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindcv_mnv2.ops.folded import _classes  # noqa: E402

pytestmark = [pytest.mark.usefixtures("pynative"), pytest.mark.numerics]  # PyNative: no graph compiles

# float32 products over K <= 200 terms of O(1) values (and a depthwise sum of 9 before a second
# product): rounding is ~sqrt(K) * 2^-24 * |partial sums| ~ 1e-5 at most here; 1e-4 relative to the
# output's scale leaves room for FMA versus separate rounding, while a wrong tap, a lost bias or a
# shifted tail column is O(1).
RTOL = 1e-4


def _param(a: np.ndarray, name: str) -> ms.Parameter:
    return ms.Parameter(ms.Tensor(a.astype(np.float32)), name=name, requires_grad=False)


def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _pw(x, w, b):
    return np.einsum("oc,nchw->nohw", w[:, :, 0, 0].astype(np.float64), x.astype(np.float64)) + b[None, :, None, None]


def _conv3(x, w, b, stride, depthwise=False):
    n, c, h, wd = x.shape
    oh, ow = (h - 1) // stride + 1, (wd - 1) // stride + 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], oh, ow))
    for ky in range(3):
        for kx in range(3):
            patch = xp[:, :, ky:ky + stride * (oh - 1) + 1:stride, kx:kx + stride * (ow - 1) + 1:stride]
            if depthwise:
                out += w[None, :, 0, ky, kx, None, None] * patch
            else:
                out += np.einsum("oc,nchw->nohw", w[:, :, ky, kx].astype(np.float64), patch)
    return out + b[None, :, None, None]


def _check(got, want):
    scale = np.abs(want).max()
    assert scale > 0.1
    err = np.abs(got.astype(np.float64) - want).max()
    assert err <= RTOL * scale, (err, scale)


# (n, cin, cout, h, w): pixel counts that are and are not multiples of the 16- and 32-pixel tiles (and
# at most 16 past one: the narrow tile), output channels that are and are not multiples of the 6- and
# 8-row tiles (AVX2, AVX-512 builds), one image (fewer images than threads: the channel-split path; at
# most 1024 pixels its weights read in place, a last partial panel repeating its last row) and several;
# a 60x60 map spans several pixel blocks at small K. K up to pointwise.cc's IN_PLACE_K (64) reads B in place, deeper K (80) packs it: one image at K = 80 packs each
# block once for all its channel groups (one block at 9x7, two of 338 pixels at 26x26).
PW_SHAPES = [(2, 16, 96, 12, 12), (1, 3, 7, 5, 3), (3, 40, 13, 7, 7), (1, 24, 144, 1, 1), (2, 8, 30, 60, 60),
             (2, 80, 24, 9, 7), (1, 80, 40, 9, 7), (1, 80, 24, 26, 26)]


@pytest.mark.parametrize("n, cin, cout, h, w", PW_SHAPES)
def test_pointwise_conv_with_fused_epilogues_matches_numpy(n, cin, cout, h, w):
    rng = np.random.default_rng(cin * 7 + cout)
    x, r = _rand(rng, n, cin, h, w), _rand(rng, n, cout, h, w)
    wt, b = _rand(rng, cout, cin, 1, 1, scale=cin ** -0.5), _rand(rng, cout)
    AotConvBias, AotConvBiasResidual = _classes()[2], _classes()[3]
    lin = _pw(x, wt, b)
    for name, want in (("PwConvBias", lin), ("PwConvBiasRelu6", np.clip(lin, 0, 6))):
        _check(AotConvBias(_param(wt, "w"), _param(b, "b"), name, 1)(ms.Tensor(x)).asnumpy(), want)
    got = AotConvBiasResidual(_param(wt, "w"), _param(b, "b"))(ms.Tensor(x), ms.Tensor(r)).asnumpy()
    _check(got, lin + r)


# (n, h, w, cout): odd and even sizes, one image (the row-parallel path) and several (image-parallel);
# the last case's output (8 x 32 x 128 x 128 floats = 16.8 MB at stride 2) is past pointwise.cc's
# STREAM_BYTES, so its tiles write with cache-bypassing stores; 48-pixel rows (the 96 px stem) end in a
# 16-pixel strip (the narrow tile of the AVX-512 build).
STEMS = [(s, n, h, w, 16) for s in (1, 2) for n, h, w in ((2, 15, 15), (1, 32, 32), (3, 9, 6), (1, 12, 49))] + [
    (2, 8, 256, 256, 32), (2, 2, 96, 96, 16)]


@pytest.mark.parametrize("stride, n, h, w, cout", STEMS)
def test_stem_conv3x3_matches_numpy(stride, n, h, w, cout):
    rng = np.random.default_rng(h * w + stride)
    x, wt, b = _rand(rng, n, 3, h, w), _rand(rng, cout, 3, 3, 3, scale=0.3), _rand(rng, cout)
    cell = _classes()[2](_param(wt, "w"), _param(b, "b"), f"Conv3x3BiasRelu6S{stride}", stride)
    _check(cell(ms.Tensor(x)).asnumpy(), np.clip(_conv3(x, wt, b, stride), 0, 6))


# (n, cin, hidden, cout, h, stride, residual): odd and even maps for the even/odd column split of
# stride 2; maps narrower than pointwise.cc's NARROW (8 planes per vector, channel counts that leave
# a partial group of 8); 4x4 maps and below (a thread's images batched); one image (layer by layer)
# and several (image by image); the width is h + 1, so rows and columns are not interchangeable.
# Widths 34 and 47 (17 or more): the split's last, overlapping vector window, at an even and an odd width.
# 8 images of 5x6 at hidden 1200: small maps run several images at a time within a cache budget
# (pointwise.cc's BLOCK_BATCH_BYTES: 3 of these), so each thread's images take more than one pass.
BLOCKS = [(8, 8, 1200, 8, 5, 1, True), (3, 8, 48, 8, 9, 1, True), (2, 8, 48, 16, 9, 2, False), (1, 16, 96, 24, 12, 2, False),
          (2, 24, 144, 32, 7, 1, False), (1, 24, 144, 24, 5, 1, True), (2, 8, 24, 8, 33, 2, False),
          (2, 8, 24, 8, 2, 2, False), (1, 4, 20, 4, 7, 2, False), (3, 4, 12, 4, 3, 1, True),
          (2, 6, 36, 6, 10, 1, True), (2, 8, 16, 8, 20, 1, False), (1, 8, 16, 8, 46, 2, False)]


@pytest.mark.parametrize("n, cin, hidden, cout, h, stride, residual", BLOCKS)
def test_whole_block_matches_its_three_layers_in_numpy(n, cin, hidden, cout, h, stride, residual):
    rng = np.random.default_rng(hidden + h)
    x = _rand(rng, n, cin, h, h + 1)  # not square: rows and columns are not interchangeable
    w1, b1 = _rand(rng, hidden, cin, 1, 1, scale=cin ** -0.5), _rand(rng, hidden)
    wd, bd = _rand(rng, hidden, 1, 3, 3, scale=0.5), _rand(rng, hidden)
    w2, b2 = _rand(rng, cout, hidden, 1, 1, scale=hidden ** -0.5), _rand(rng, cout)
    e = np.clip(_pw(x, w1, b1), 0, 6)
    want = _pw(np.clip(_conv3(e, wd, bd, stride, depthwise=True), 0, 6), w2, b2) + (x if residual else 0)
    params = [_param(a, f"p{i}") for i, a in enumerate((w1, b1, wd, bd, w2, b2))]
    _check(_classes()[4](params, stride, residual)(ms.Tensor(x)).asnumpy(), want)


@pytest.mark.parametrize("n", [1, 4])
def test_block_without_expansion_matches_numpy(n):
    rng = np.random.default_rng(n)
    x = _rand(rng, n, 16, 10, 11)
    wd, bd = _rand(rng, 16, 1, 3, 3, scale=0.5), _rand(rng, 16)
    w2, b2 = _rand(rng, 8, 16, 1, 1, scale=0.25), _rand(rng, 8)
    want = _pw(np.clip(_conv3(x, wd, bd, 1, depthwise=True), 0, 6), w2, b2)
    params = [_param(a, f"p{i}") for i, a in enumerate((wd, bd, w2, b2))]
    _check(_classes()[5](params)(ms.Tensor(x)).asnumpy(), want)


def test_block_reads_its_parameters_when_they_change():
    """refresh() sets the folded Parameters in place: the block must use the new values, not a copy."""
    rng = np.random.default_rng(5)
    x = _rand(rng, 2, 8, 6, 6)
    arrays = [_rand(rng, 24, 8, 1, 1), _rand(rng, 24), _rand(rng, 24, 1, 3, 3), _rand(rng, 24),
              _rand(rng, 8, 24, 1, 1), _rand(rng, 8)]
    params = [_param(a, f"p{i}") for i, a in enumerate(arrays)]
    cell = _classes()[4](params, 1, True)
    before = cell(ms.Tensor(x)).asnumpy()
    params[5].set_data(ms.Tensor(arrays[5] + 1.0))
    np.testing.assert_allclose(cell(ms.Tensor(x)).asnumpy(), before + 1.0, rtol=0, atol=1e-5)


# (n, c, classes, h): a few images (a vectorised dot product per logit: C = 40, 24 and 45 take its
# 32-float, 8-float and scalar steps) and more (the pooled batch as one matrix product, the batch as its
# columns: 5 leaves a partial tile of 16 or 32 columns, 33 a second tile; C = 1280 as in the real
# classifier).
@pytest.mark.parametrize("n, c, classes, h", [(1, 40, 7, 3), (3, 24, 13, 1), (2, 45, 11, 2), (1, 1280, 1000, 7),
                                           (5, 40, 7, 3), (33, 64, 1001, 2), (6, 1280, 10, 3)])
def test_pool_and_classifier_head_matches_numpy(n, c, classes, h):
    rng = np.random.default_rng(n + c)
    x = _rand(rng, n, c, h, h + 1)
    wt, b = _rand(rng, classes, c, scale=c ** -0.5), _rand(rng, classes)
    want = x.astype(np.float64).mean((2, 3)) @ wt.T.astype(np.float64) + b
    _check(_classes()[6](_param(wt, "w"), _param(b, "b"))(ms.Tensor(x)).asnumpy(), want)
