"""Data pipeline: ImageFolder scanning, MindCV transforms, sharded loaders, Mixup/CutMix.

``scan_image_folder`` and ``DataError`` import without MindSpore; the rest load it lazily.
"""
from typing import Any

from .folder import IMG_EXTENSIONS, DataError, ImageList, scan_image_folder, sniff_image

_LAZY = {
    "create_transforms": ".transforms",
    "parse_auto_augment": ".transforms",
    "interpolation_mode": ".transforms",
    "RandomErasing": ".transforms",
    "CentralCrop": ".transforms",
    "IMAGENET_MEAN": "..constants",
    "IMAGENET_STD": "..constants",
    "DEFAULT_CROP_PCT": "..constants",
    "create_loader": ".loader",
    "Loader": ".loader",
    "shard_indices": ".loader",
    "verify_images": ".verify",
    "pipeline_error": ".loader",
    "Mixup": ".mixup",
    "one_hot_smooth": ".mixup",
}

__all__ = ["IMG_EXTENSIONS", "DataError", "ImageList", "scan_image_folder", "sniff_image", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'mindcv_mnv2.data' has no attribute '{name}'")
