"""Model construction by registry name."""
from __future__ import annotations

from typing import Any, Optional

from .mobilenetv2 import (DEFAULT_OUT_INDICES, MobileNetV2, MobileNetV2Features,  # noqa: F401
                          make_divisible)
from .registry import ALIASES, REGISTRY, ModelSpec, get_spec, list_models, model_defaults  # noqa: F401

__all__ = ["create_model", "list_models", "get_spec", "model_defaults", "MobileNetV2",
           "MobileNetV2Features", "UnknownModelError", "DEFAULT_OUT_INDICES"]


class UnknownModelError(ValueError):
    """A model name that is not in the registry."""


def create_model(name: str, num_classes: int = 1000, pretrained_ckpt: Optional[str] = None,
                 **kwargs: Any) -> MobileNetV2:
    """Build a registered MobileNetV2; optionally load weights strictly from a checkpoint.

    kwargs go to MobileNetV2 (in_channels, drop_rate, padding, output_stride, round_nearest).
    With `pretrained_ckpt`, a classifier whose class count differs from `num_classes` is
    dropped (with a printed warning) so the network can be fine-tuned.
    """
    try:
        spec = get_spec(name)
    except KeyError as e:
        raise UnknownModelError(e.args[0]) from None
    if "width_mult" in kwargs:
        raise TypeError(f"create_model: width_mult comes from the model name ({name} -> "
                        f"{spec.width_mult}); pick another registered name instead")
    net = MobileNetV2(width_mult=spec.width_mult, num_classes=num_classes, **kwargs)
    if pretrained_ckpt:
        from ..checkpoint import load_pretrained
        load_pretrained(net, pretrained_ckpt)
    return net
