"""Model construction by registry name."""
from __future__ import annotations

from typing import Any

from .mobilenetv2 import (DEFAULT_OUT_INDICES, MobileNetV2, MobileNetV2Features,  # noqa: F401
                          make_divisible)
from .registry import ALIASES, REGISTRY, ModelSpec, get_spec, list_models, model_defaults  # noqa: F401

__all__ = ["create_model", "list_models", "get_spec", "model_defaults", "MobileNetV2",
           "MobileNetV2Features", "UnknownModelError", "DEFAULT_OUT_INDICES"]


from ..errors import UnknownModelError  # noqa: E402,F401  (raised here; re-exported)


def create_model(name: str, num_classes: int = 1000, **kwargs: Any) -> MobileNetV2:
    """Build a registered MobileNetV2 with fresh weights (loading is checkpoint.load_weights' job).

    kwargs go to MobileNetV2 (in_channels, drop_rate, padding, output_stride, round_nearest).
    """
    try:
        spec = get_spec(name)
    except KeyError as e:
        raise UnknownModelError(e.args[0]) from None
    if "width_mult" in kwargs:
        raise TypeError(f"create_model: width_mult comes from the model name ({name} -> "
                        f"{spec.width_mult}); pick another registered name instead")
    return MobileNetV2(width_mult=spec.width_mult, num_classes=num_classes, **kwargs)
