"""Inference with BatchNorm folded, on the project's C++ kernels (CPU): the cells models.fold plugs in.

``FoldedMobileNetV2`` (models.fold) asks five factories for its layers; each returns a cell on the
C++ kernels, or None where a layer does not fit them (it then keeps plain MindSpore ops):

- :func:`fused_epilogue`: bias (+ ReLU6) (+ residual) in one pass after a MindSpore convolution;
- :func:`fused_depthwise`: depthwise 3x3 + bias (+ ReLU6) (depthwise.cc);
- :func:`fused_conv`: a 1x1 convolution or the 3x3 stem as one packed matrix product with the
  epilogue fused (pointwise.cc), in place of MindSpore's Conv2D (oneDNN on NCHW) + epilogue;
- :func:`fused_block`: a whole inverted-residual block as one operator (pointwise.cc), run image by
  image so the expanded activations stay in cache;
- :func:`fused_head`: the global average pool and the classifier.

Inference only: these cells have no gradient. Each reads the folded copy's own Parameters
(``refresh`` updates them in place), so the weights are shared, not copied.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from .depthwise import _eligible, _out_hw, kernel_library

if TYPE_CHECKING:
    from mindspore import Parameter, nn

# (conv cell of the trained network, folded weight Parameter, folded bias Parameter, ReLU6 after it)
LayerSpec = Tuple[object, object, object, bool]


def _geometry(conv) -> Optional[Tuple[str, int, int]]:
    """(kind, stride, dilation) of a convolution the C++ kernels take, else None.

    kind: 'dw' (depthwise 3x3, dilation 1, 2 or 4), 'pw' (1x1) or 'conv3' (the dense 3x3 stem).
    """
    if type(conv).__name__ == "AotDepthwise":
        return "dw", int(conv.stride), int(conv.dilation)
    if type(conv).__name__ != "Conv2d":  # TFSameConv2d (asymmetric padding) and others: MindSpore's conv
        return None
    if _eligible(conv):
        return "dw", int(tuple(conv.stride)[0]), int(tuple(conv.dilation)[0])
    ks, stride = tuple(conv.kernel_size), tuple(conv.stride)
    pad = conv.padding if isinstance(conv.padding, int) else tuple(conv.padding)
    if conv.group != 1 or conv.has_bias or tuple(conv.dilation) != (1, 1) or stride[0] != stride[1]:
        return None
    if ks == (1, 1) and stride[0] == 1 and (conv.pad_mode in ("same", "valid") or pad in (0, (0, 0, 0, 0))):
        return "pw", 1, 1
    if ks == (3, 3) and stride[0] in (1, 2) and conv.pad_mode == "pad" and pad in (1, (1, 1, 1, 1)):
        return "conv3", stride[0], 1
    return None


@lru_cache(maxsize=None)
def _classes():
    """The cell classes, built lazily so importing this module needs no MindSpore."""
    from mindspore import nn, ops

    lib = kernel_library()

    def custom(name: str, out_shape):
        return ops.Custom(f"{lib}:{name}", out_shape=out_shape, out_dtype=lambda *ts: ts[0], func_type="aot")

    class AotEpilogue(nn.Cell):
        """``y + bias`` (then ReLU6) (then + residual) in one C++ pass."""

        def __init__(self, relu6: bool, residual: bool) -> None:
            super().__init__()
            if residual and relu6:
                raise ValueError("MobileNetV2 has no ReLU6 after a residual add")
            name = "BiasAddResidual" if residual else ("BiasRelu6" if relu6 else "BiasAdd")
            self.residual = residual
            self.op = custom(name, lambda *shapes: shapes[0])

        def construct(self, y, bias, residual=None):
            if self.residual:
                return self.op(y, bias, residual)
            return self.op(y, bias)

    class AotDepthwiseBias(nn.Cell):
        """Depthwise 3x3 + bias (+ ReLU6) in one C++ kernel."""

        def __init__(self, weight, bias, stride: int, dilation: int, relu6: bool) -> None:
            super().__init__()
            s = int(stride)
            self.op = custom(f"DwForwardBias{'Relu6' if relu6 else ''}S{s}_D{int(dilation)}",
                             lambda xs, ws, bs: [xs[0], xs[1], _out_hw(xs[2], s), _out_hw(xs[3], s)])
            self.weight, self.bias = weight, bias

        def construct(self, x):
            return self.op(x, self.weight, self.bias)

    class AotConvBias(nn.Cell):
        """A 1x1 convolution (or the 3x3 stem) + bias (+ ReLU6) as one packed matrix product."""

        def __init__(self, weight, bias, name: str, stride: int) -> None:
            super().__init__()
            self.op = custom(name, lambda xs, ws, bs: [xs[0], ws[0], _out_hw(xs[2], stride),
                                                       _out_hw(xs[3], stride)])
            self.weight, self.bias = weight, bias

        def construct(self, x):
            return self.op(x, self.weight, self.bias)

    class AotConvBiasResidual(nn.Cell):
        """The project 1x1 convolution of a residual block: product, bias and + the block's input."""

        def __init__(self, weight, bias) -> None:
            super().__init__()
            self.op = custom("PwConvBiasResidual", lambda xs, ws, bs, rs: rs)
            self.weight, self.bias = weight, bias

        def construct(self, x, residual):
            return self.op(x, self.weight, self.bias, residual)

    def block_shape(stride: int):
        return lambda xs, *rest: [xs[0], rest[-2][0], _out_hw(xs[2], stride), _out_hw(xs[3], stride)]

    class AotBlock(nn.Cell):
        """A whole inverted-residual block (expand, depthwise, project [+ input]) as one operator."""

        def __init__(self, params: Sequence[object], stride: int, residual: bool) -> None:
            super().__init__()
            self.op = custom(f"IrBlockS{stride}{'Res' if residual else ''}", block_shape(stride))
            self.w1, self.b1, self.wd, self.bd, self.w2, self.b2 = params

        def construct(self, x):
            return self.op(x, self.w1, self.b1, self.wd, self.bd, self.w2, self.b2)

    class AotBlockNoExpand(nn.Cell):
        """The first block (expansion 1): depthwise and project as one operator."""

        def __init__(self, params: Sequence[object]) -> None:
            super().__init__()
            self.op = custom("IrBlockNoExpandS1", block_shape(1))
            self.wd, self.bd, self.w2, self.b2 = params

        def construct(self, x):
            return self.op(x, self.wd, self.bd, self.w2, self.b2)

    class AotPoolDense(nn.Cell):
        """Global average pool and the classifier, (N, C, H, W) -> (N, classes), in one C++ operator."""

        def __init__(self, weight, bias) -> None:
            super().__init__()
            self.op = custom("PoolDense", lambda xs, ws, bs: [xs[0], ws[0]])
            self.weight, self.bias = weight, bias

        def construct(self, x):
            return self.op(x, self.weight, self.bias)

    return (AotEpilogue, AotDepthwiseBias, AotConvBias, AotConvBiasResidual, AotBlock, AotBlockNoExpand,
            AotPoolDense)


def fused_epilogue(relu6: bool, residual: bool) -> nn.Cell:
    """Bias (+ ReLU6) (+ residual) in one C++ pass, after a convolution the kernels do not take."""
    return _classes()[0](relu6, residual)


def fused_depthwise(conv: nn.Cell, weight: Parameter, bias: Parameter, relu6: bool) -> Optional[nn.Cell]:
    """Depthwise 3x3 + bias (+ ReLU6) on the C++ kernel, or None if ``conv`` is not one it takes."""
    geo = _geometry(conv)
    if geo is None or geo[0] != "dw":
        return None
    return _classes()[1](weight, bias, geo[1], geo[2], relu6)


def fused_conv(conv: nn.Cell, weight: Parameter, bias: Parameter, relu6: bool, residual: bool) -> Optional[nn.Cell]:
    """A 1x1 or 3x3-stem convolution + bias (+ ReLU6 or + residual) on the C++ kernel, or None."""
    geo = _geometry(conv)
    if geo is None or geo[0] == "dw":
        return None
    kind, stride, _ = geo
    if residual:
        return _classes()[3](weight, bias) if kind == "pw" and not relu6 else None
    if kind == "pw":
        return _classes()[2](weight, bias, "PwConvBiasRelu6" if relu6 else "PwConvBias", 1)
    return _classes()[2](weight, bias, f"Conv3x3BiasRelu6S{stride}", stride) if relu6 else None


def fused_head(weight: Parameter, bias: Parameter) -> nn.Cell:
    """Global average pool + classifier (weight: classes x C, bias: classes) on the C++ kernel."""
    return _classes()[6](weight, bias)


def fused_block(layers: List[LayerSpec], residual: bool) -> Optional[nn.Cell]:
    """An inverted-residual block as one C++ operator, or None where its layers do not fit the kernel.

    ``layers``: [expand 1x1 + ReLU6,] depthwise 3x3 + ReLU6, project 1x1 (no ReLU6), in order. The
    block kernel has no dilated depthwise (output_stride 8 / 16 keeps the per-layer kernels).
    """
    kinds = [(_geometry(conv), relu6) for conv, _, _, relu6 in layers]
    params = [t for _, w, b, _ in layers for t in (w, b)]
    pw, pw_relu6 = (("pw", 1, 1), False), (("pw", 1, 1), True)
    if len(layers) == 3 and kinds[0] == pw_relu6 and kinds[2] == pw \
            and kinds[1] in ((("dw", 1, 1), True), (("dw", 2, 1), True)):
        stride = kinds[1][0][1]
        if residual and stride != 1:
            return None
        return _classes()[4](params, stride, residual)
    if len(layers) == 2 and kinds == [(("dw", 1, 1), True), pw] and not residual:
        return _classes()[5](params)
    return None
