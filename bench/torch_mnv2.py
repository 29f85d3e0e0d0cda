"""A PyTorch MobileNetV2 with exactly the project's layer shapes (the CPU eager baseline).

Same t/c/n/s table, make_divisible rounding, unrounded hidden widths, 3x3 pad-1 convs without
bias, BN(eps 1e-5), ReLU6, dropout 0.2 + Linear head, so FLOPs and parameter counts match
mindcv_mnv2.models.MobileNetV2 (the smoke test checks the count against mindcv_mnv2.summary).
"""
from __future__ import annotations

import torch
from torch import nn

SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1))


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channel rounding of the reference implementation."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias) + BN (+ ReLU6)."""
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)]
    if relu:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> linear project 1x1, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(cin * expand)
        layers = [conv_bn(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, relu=False)]
        self.layers = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Block output."""
        return x + self.layers(x) if self.residual else self.layers(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 at a width multiplier (ImageNet layout)."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, drop_rate: float = 0.2) -> None:
        super().__init__()
        cin = make_divisible(32 * width_mult)
        feats = [conv_bn(3, cin, 3, 2)]
        for t, c, n, s in SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = make_divisible(1280 * max(1.0, width_mult))
        feats.append(conv_bn(cin, last, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.classifier(self.features(x).mean((2, 3)))


def num_trainable(net: nn.Module) -> int:
    """Trainable parameter count (conv/linear weights and biases, BN affine)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
