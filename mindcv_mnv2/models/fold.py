"""MobileNetV2 for inference with every BatchNorm folded into the convolution before it.

In eval mode BatchNorm is ``y = (x - mean) / sqrt(var + eps) * gamma + beta``: per output channel
an affine map, which folds into the preceding convolution's weights (``w * s``, ``s = gamma /
sqrt(var + eps)``) plus a bias (``beta - mean * s``). The network computes the same function to
float rounding, with one pass over each activation instead of three (conv, BatchNorm, ReLU6), which
is where MindSpore's CPU evaluation spent most of its time. Checkpoints are unchanged: the folded
copy is rebuilt from the trained network's tensors (``refresh``).

How each layer runs is pluggable: plain MindSpore ops by default (any device, exportable), or fused
kernels from factories (engine.evaluator passes the C++ ones of mindcv_mnv2.ops.folded on CPU): an
epilogue after a convolution, a depthwise layer, a whole convolution with its epilogue, a whole
inverted-residual block, and the pool with the classifier. A factory returns None for a layer it
does not take, which then stays plain.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .mobilenetv2 import GlobalAvgPool, InvertedResidual, MobileNetV2

__all__ = ["FoldedMobileNetV2", "fold_conv_bn"]

# make_epilogue(relu6, residual) -> Cell: construct(y, bias) or construct(y, bias, residual)
EpilogueFactory = Callable[[bool, bool], nn.Cell]
# make_depthwise(conv, weight, bias, relu6) -> Cell computing relu6?(depthwise(x) + bias), or None
DepthwiseFactory = Callable[[nn.Cell, Parameter, Parameter, bool], Optional[nn.Cell]]
# make_conv(conv, weight, bias, relu6, residual) -> Cell like ConvBias / ConvBiasResidual, or None
ConvFactory = Callable[[nn.Cell, Parameter, Parameter, bool, bool], Optional[nn.Cell]]
# make_block([(conv, weight, bias, relu6) per layer], residual) -> Cell computing the whole block, or None
BlockFactory = Callable[[List[Tuple[nn.Cell, Parameter, Parameter, bool]], bool], Optional[nn.Cell]]
# make_head(weight, bias) -> Cell: feature map (N, C, H, W) -> logits, the pool and the classifier
HeadFactory = Callable[[Parameter, Parameter], nn.Cell]


def fold_conv_bn(weight: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                 eps: float) -> Tuple[np.ndarray, np.ndarray]:
    """(weight, bias) of a bias-free conv followed by an eval-mode BatchNorm, as one conv (float64 math)."""
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    w = weight.astype(np.float64) * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    b = beta.astype(np.float64) - mean.astype(np.float64) * scale
    return w.astype(np.float32), b.astype(np.float32)


class Epilogue(nn.Cell):
    """``y + bias`` (then ReLU6) (then + residual) with plain ops: any device, and exportable."""

    def __init__(self, relu6: bool, residual: bool) -> None:
        super().__init__()
        self.relu6, self.residual = relu6, residual

    def construct(self, y, bias, residual=None):
        y = y + bias.reshape((1, -1, 1, 1))
        if self.relu6:
            y = ops.clamp(y, 0.0, 6.0)
        if self.residual:
            y = y + residual
        return y


class ConvBias(nn.Cell):
    """A bias-free convolution whose BatchNorm was folded in: conv, then its epilogue."""

    def __init__(self, conv: nn.Cell, out_channels: int, epilogue: nn.Cell) -> None:
        super().__init__()
        self.conv = conv
        self.bias = Parameter(Tensor(np.zeros(out_channels, np.float32)), name="bias", requires_grad=False)
        self.epilogue = epilogue

    def construct(self, x):
        return self.epilogue(self.conv(x), self.bias)


class ConvBiasResidual(ConvBias):
    """The project convolution of a residual block: conv, bias, + the block's input, in one epilogue."""

    def construct(self, x, residual):
        return self.epilogue(self.conv(x), self.bias, residual)


class _FoldedBlock(nn.Cell):
    def __init__(self, layers: List[nn.Cell], residual: bool) -> None:
        super().__init__()
        self.body = nn.SequentialCell(layers[:-1])
        self.project = layers[-1]
        self.residual = residual

    def construct(self, x):
        if self.residual:
            return self.project(self.body(x), x)
        return self.project(self.body(x))


def _plain_conv(conv: nn.Cell) -> nn.Cell:
    """A fresh bias-free nn.Conv2d with the configuration of ``conv`` (nn.Conv2d or the C++ depthwise cell)."""
    if isinstance(conv, nn.Conv2d):
        return nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, pad_mode=conv.pad_mode,
                         padding=conv.padding, dilation=conv.dilation, group=conv.group, has_bias=False)
    c = int(conv.weight.shape[0])  # the C++ depthwise cell: 3x3, padding = dilation
    return nn.Conv2d(c, c, 3, conv.stride, pad_mode="pad", padding=conv.dilation, dilation=conv.dilation, group=c,
                     has_bias=False)


class FoldedMobileNetV2(nn.Cell):
    """An inference copy of a MobileNetV2 with BatchNorm folded; ``refresh(tensors)`` sets its values.

    Built from the network's structure (its tensors are copied, not shared); the output is the
    eval-mode output of the original to float rounding (tests/test_fold.py).
    """

    def __init__(self, net: MobileNetV2, make_epilogue: Optional[EpilogueFactory] = None,
                 make_depthwise: Optional[DepthwiseFactory] = None, make_conv: Optional[ConvFactory] = None,
                 make_block: Optional[BlockFactory] = None, make_head: Optional[HeadFactory] = None) -> None:
        super().__init__()
        make_epilogue = make_epilogue or Epilogue
        self.num_classes = net.num_classes
        self._sources: List[Tuple[ConvBias, str, str, float]] = []  # (folded cell, conv name, BN prefix, eps)

        def folded(conv: nn.Cell, bn: nn.BatchNorm2d, conv_name: str, bn_prefix: str, relu6: bool,
                   residual: bool = False) -> ConvBias:
            out_ch = int(bn.moving_mean.shape[0])
            cls = ConvBiasResidual if residual else ConvBias
            cell = cls(_plain_conv(conv), out_ch, make_epilogue(relu6, residual))
            self._sources.append((cell, conv_name, bn_prefix, float(bn.eps)))
            return cell

        def fused(conv: nn.Cell, cell: ConvBias, relu6: bool, residual: bool = False) -> nn.Cell:
            # A layer's own fused kernel, where a factory takes it; the folded cell's Parameters are shared.
            out = None
            if make_depthwise is not None and not residual and _is_depthwise(conv):
                out = make_depthwise(conv, cell.conv.weight, cell.bias, relu6)
            elif make_conv is not None and not _is_depthwise(conv):
                out = make_conv(conv, cell.conv.weight, cell.bias, relu6, residual)
            return cell if out is None else out

        f = net.features
        layers: List[nn.Cell] = [fused(f[0], folded(f[0], f[1], "features.0", "features.1", True), True)]
        for i in range(3, len(f) - 3):
            block: InvertedResidual = f[i]
            cells = list(block.layers)
            p = f"features.{i}.layers"
            parts: List[Tuple[nn.Cell, ConvBias, bool, bool]] = []  # (conv, folded cell, relu6, residual)
            k = 0
            while k < len(cells):
                conv, bn = cells[k], cells[k + 1]
                relu6 = k + 2 < len(cells) and isinstance(cells[k + 2], nn.ReLU6)
                residual = k + (3 if relu6 else 2) >= len(cells) and block.use_res_connect
                parts.append((conv, folded(conv, bn, f"{p}.{k}", f"{p}.{k + 1}", relu6, residual), relu6, residual))
                k += 3 if relu6 else 2
            whole = None
            if make_block is not None:
                whole = make_block([(conv, c.conv.weight, c.bias, r) for conv, c, r, _ in parts],
                                   block.use_res_connect)
            if whole is None:  # per-layer kernels only where the block's own does not fit
                whole = _FoldedBlock([fused(*part) for part in parts], block.use_res_connect)
            layers.append(whole)
        n = len(f)
        last = folded(f[n - 3], f[n - 2], f"features.{n - 3}", f"features.{n - 2}", True)
        layers.append(fused(f[n - 3], last, True))
        self.features = nn.SequentialCell(layers)
        dense = net.classifier[1]
        self.classifier = nn.Dense(dense.in_channels, dense.out_channels)
        self.head = None if make_head is None else make_head(self.classifier.weight, self.classifier.bias)
        self.pool = GlobalAvgPool()  # used without a fused head
        self.refresh({p.name: p.asnumpy() for p in net.get_parameters()})

    def refresh(self, tensors: Mapping[str, Any]) -> None:
        """Fold the trained network's tensors (name -> array or Tensor, MindCV names) into this copy."""
        def arr(name: str) -> np.ndarray:
            v = tensors[name]
            return v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v)

        for cell, conv, bn, eps in self._sources:
            w, b = fold_conv_bn(arr(conv + ".weight"), arr(bn + ".gamma"), arr(bn + ".beta"), arr(bn + ".moving_mean"),
                                arr(bn + ".moving_variance"), eps)
            cell.conv.weight.set_data(Tensor(w))
            cell.bias.set_data(Tensor(b))
        self.classifier.weight.set_data(Tensor(arr("classifier.1.weight")))
        self.classifier.bias.set_data(Tensor(arr("classifier.1.bias")))

    def construct(self, x):
        x = self.features(x)
        if self.head is None:
            return self.classifier(self.pool(x))
        return self.head(x)


def _is_depthwise(conv: nn.Cell) -> bool:
    if isinstance(conv, nn.Conv2d):
        return conv.group == conv.in_channels == conv.out_channels and conv.group > 1
    return hasattr(conv, "dilation") and hasattr(conv, "weight")  # the C++ depthwise cell


def folded_state(net: "FoldedMobileNetV2") -> Dict[str, np.ndarray]:
    """The folded network's own tensors (for tests and exports)."""
    return {p.name: p.asnumpy() for p in net.get_parameters()}
