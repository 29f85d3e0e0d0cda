"""Per-image transforms as MindSpore C++ vision ops, MindCV's recipe order.

Images enter as ENCODED BYTES (a uint8 1-D array) and leave as float32 CHW, normalised on
0-255 pixels. Decoding always yields 3-channel uint8 RGB: checked on MindSpore 2.10 for
grayscale, grayscale+alpha, palette and RGBA PNG, 16-bit grey/RGB/RGBA PNG (high byte kept),
CMYK and progressive JPEG, BMP and TIFF, so no conversion op is needed on the common path.

Two steps are not plain per-image C++ ops:

- random erasing (``re_prob > 0``): MindSpore's ``vision.RandomErasing`` is a Python op run per
  image. :class:`RandomErasing` here is vectorised over a batch; :func:`create_loader` moves it
  from the end of the list to one batch-level map. Called on one CHW array it also works alone.
- the TF-slim/Inception eval crop (``inception_crop=True``: central ``crop_pct`` of each side,
  then a square resize) needs each image's decoded size, which no C++ op takes as a fraction.
  :class:`CentralCrop` is a one-line numpy slice run as a Python op between the C++ Decode and
  Resize (evaluation only, off the default path). The all-C++ alternative (resize the whole
  image to S/crop_pct, centre-crop S) was measured 2-4 grey levels off on average because the
  rounded S/crop_pct changes the sampling scale.

Auto-augment policy strings (MindCV/timm style) map onto MindSpore's built-in C++ ops:
``randaug-mM-nN[-mstdS][-mmaxX][-incI][-wW]`` -> ``vision.RandAugment(N, M, 11 bins)`` (timm's
0-10 magnitude scale; per-image magnitude noise ``mstd``, ``w`` and ``inc`` have no equivalent in
the C++ op and are ignored with an info message), ``autoaug``/``autoaugr`` -> ``vision.AutoAugment``
ImageNet policy (torchvision's; ``autoaugr``'s increasing-posterize variant is approximated by
it), ``trivialaugwide`` -> ``vision.TrivialAugmentWide``. Fill is the mean pixel, as in MindCV.
"""
from __future__ import annotations

import logging
import math
import re
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..constants import AUTO_AUGMENT_PREFIXES, DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD
from .folder import DataError

if TYPE_CHECKING:
    from mindspore.dataset.vision import Inter

log = logging.getLogger("mindcv_mnv2")
AUTO_AUGMENT_FORMS = ("randaug-m9-n2[-mstd0.5]", "autoaug", "autoaugr", "trivialaugwide")


def _vision():
    import mindspore.dataset.vision as vision  # imported lazily: a data error never waits for MindSpore

    return vision


def interpolation_mode(name: Optional[str]) -> Inter:
    """MindSpore ``Inter`` for a MindCV interpolation name (None = bilinear)."""
    inter = _vision().Inter
    table = {"bilinear": inter.BILINEAR, "linear": inter.BILINEAR, "bicubic": inter.BICUBIC,
             "nearest": inter.NEAREST, "area": inter.AREA, "pilcubic": inter.PILCUBIC}
    key = "bilinear" if name is None else str(name).lower()
    if key not in table:
        raise DataError(f"interpolation '{name}' is not supported; use one of {sorted(table)}")
    return table[key]


def parse_auto_augment(policy: str) -> Tuple[str, dict]:
    """Split a MindCV/timm policy string into (kind, params); DataError if it is unknown."""
    parts = str(policy).strip().lower().split("-")
    kind, opts = parts[0], parts[1:]
    params: dict = {}
    if kind not in AUTO_AUGMENT_PREFIXES:
        raise DataError(f"auto_augment '{policy}' is not a known policy; use one of {', '.join(AUTO_AUGMENT_FORMS)} "
                        f"or leave it unset")
    for opt in opts:
        m = re.fullmatch(r"(mstd|mmax|inc|m|n|w)([0-9.]+)", opt)
        if m is None:
            raise DataError(f"auto_augment '{policy}': cannot parse '{opt}'; options look like m9, n2, mstd0.5, "
                            f"mmax10, inc1, w0")
        key, val = m.group(1), m.group(2)
        try:
            params[key] = float(val)
        except ValueError:
            raise DataError(f"auto_augment '{policy}': '{opt}' needs a number after '{key}'") from None
    if kind != "randaug" and set(params) - {"mstd"}:
        raise DataError(f"auto_augment '{policy}': options {sorted(set(params) - {'mstd'})} apply to randaug only")
    return kind, params


def _auto_augment_op(policy: str, inter, fill: Tuple[int, int, int]):
    vision = _vision()
    kind, params = parse_auto_augment(policy)
    ignored = sorted(k for k in params if k in ("mstd", "inc", "w") and params[k] != 0)
    if ignored:
        log.info("auto_augment %s: %s not supported by MindSpore's C++ op; ignored", policy, ignored)
    if kind == "randaug":
        mmax = params.get("mmax", 10.0)
        magnitude = int(round(min(params.get("m", 9.0), mmax)))
        if not 0 <= magnitude <= 10:
            raise DataError(f"auto_augment '{policy}': magnitude must be within 0-10 (timm scale)")
        num_ops = int(params.get("n", 2))
        return vision.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=11,
                                  interpolation=inter, fill_value=fill)
    if kind in ("autoaug", "autoaugr"):
        return vision.AutoAugment(vision.AutoAugmentPolicy.IMAGENET, interpolation=inter, fill_value=fill)
    return vision.TrivialAugmentWide(num_magnitude_bins=31, interpolation=inter, fill_value=fill)


class RandomErasing:
    """Random erasing on normalised CHW images, vectorised over a batch (timm/MindCV semantics).

    ``value`` is a number (constant fill in normalised space; 0 = the mean colour) or 'random'
    (per-pixel standard normal). One rectangle per erased image, up to ``max_attempts`` tries.
    """

    def __init__(self, prob: float = 0.5, scale: Sequence[float] = (0.02, 0.33),
                 ratio: Sequence[float] = (0.3, 3.3), value: Union[float, str] = 0, max_attempts: int = 10,
                 seed: Optional[int] = None):
        if not 0.0 <= float(prob) <= 1.0:
            raise DataError(f"re_prob {prob} must be within [0, 1]")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise DataError(f"re_scale {tuple(scale)} must be (min, max) with 0 < min <= max")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise DataError(f"re_ratio {tuple(ratio)} must be (min, max) with 0 < min <= max")
        if isinstance(value, str) and value not in ("random", "rand", "pixel"):
            raise DataError(f"re_value '{value}' must be a number or 'random'")
        if int(max_attempts) < 1:
            raise DataError(f"re_max_attempts {max_attempts} must be at least 1")
        self.prob, self.scale, self.ratio = float(prob), tuple(map(float, scale)), tuple(map(float, ratio))
        self.random_fill = isinstance(value, str)
        self.value = 0.0 if self.random_fill else float(value)
        self.max_attempts = int(max_attempts)
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random stream (the loader seeds it per shard)."""
        self.rng = np.random.default_rng(seed)

    def erase_batch(self, images: np.ndarray) -> np.ndarray:
        """Erase one random rectangle in each image of an NCHW float batch with probability prob."""
        b, _, h, w = images.shape
        rng, a = self.rng, self.max_attempts
        area = rng.uniform(self.scale[0], self.scale[1], (b, a)) * (h * w)
        log_r = rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), (b, a))
        ar = np.exp(log_r)
        eh = np.round(np.sqrt(area * ar)).astype(np.int64)
        ew = np.round(np.sqrt(area / ar)).astype(np.int64)
        ok = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
        first = ok.argmax(axis=1)
        rows = np.arange(b)
        eh, ew = eh[rows, first], ew[rows, first]
        apply = ok.any(axis=1) & (rng.random(b) < self.prob)
        top = (rng.random(b) * (h - eh + 1)).astype(np.int64)
        left = (rng.random(b) * (w - ew + 1)).astype(np.int64)
        ys, xs = np.arange(h)[None, :], np.arange(w)[None, :]
        in_y = (ys >= top[:, None]) & (ys < (top + eh)[:, None])
        in_x = (xs >= left[:, None]) & (xs < (left + ew)[:, None])
        mask = (in_y[:, :, None] & in_x[:, None, :]) & apply[:, None, None]
        mask = mask[:, None, :, :]
        if not mask.any():
            return images
        if self.random_fill:
            fill = rng.standard_normal(images.shape).astype(images.dtype)
        else:
            fill = np.asarray(self.value, dtype=images.dtype)
        return np.where(mask, fill, images)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Erase one CHW image (usable as a per-image pyfunc outside create_loader)."""
        return self.erase_batch(np.asarray(image)[None])[0]


class CentralCrop:
    """TF ``central_crop``: keep the central ``fraction`` of each side of an HWC image."""

    def __init__(self, fraction: float):
        if not 0 < fraction <= 1:
            raise DataError(f"crop_pct {fraction} must be within (0, 1]")
        self.fraction = float(fraction)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The cropped view, made contiguous for the next C++ op."""
        h, w = image.shape[:2]
        top, left = int((h - h * self.fraction) / 2), int((w - w * self.fraction) / 2)
        return np.ascontiguousarray(image[top:h - top, left:w - left])


def _norm3(name: str, value: Optional[Sequence[float]], default: Tuple[float, float, float]) -> List[float]:
    if value is None:
        return list(default)
    vals = [float(v) for v in value]
    if len(vals) != 3:
        raise DataError(f"{name} {tuple(value)} must have 3 values (R, G, B on 0-255 pixels)")
    return vals


def create_transforms(is_training: bool, image_size: Optional[int] = 224, *, scale: Sequence[float] = (0.08, 1.0),
                      ratio: Sequence[float] = (0.75, 1.333), hflip: float = 0.5, vflip: float = 0.0,
                      color_jitter: Optional[float] = 0.4, interpolation: Optional[str] = "bilinear",
                      auto_augment: Optional[str] = None, re_prob: float = 0.0,
                      re_scale: Sequence[float] = (0.02, 0.33), re_ratio: Sequence[float] = (0.3, 3.3),
                      re_value: Union[float, str] = 0, re_max_attempts: int = 10,
                      mean: Optional[Sequence[float]] = IMAGENET_MEAN, std: Optional[Sequence[float]] = IMAGENET_STD,
                      crop_pct: Optional[float] = DEFAULT_CROP_PCT, inception_crop: bool = False,
                      decode: bool = True) -> List[Any]:
    """MindCV's train or val transforms for encoded-image bytes -> normalised float32 CHW.

    ``decode=False`` (evaluation only) leaves out the Decode op: the list then takes an RGB uint8
    HWC array, so a caller that decodes itself (predict) gets exactly validation's tensor.
    """
    vision = _vision()
    size = 224 if image_size is None else int(image_size)
    if size < 1:
        raise DataError(f"image_size {image_size} must be a positive number of pixels")
    inter = interpolation_mode(interpolation)
    mean3, std3 = _norm3("mean", mean, IMAGENET_MEAN), _norm3("std", std, IMAGENET_STD)
    if min(std3) <= 0:
        raise DataError(f"std {tuple(std3)} must be positive")
    tail = [vision.Normalize(mean=mean3, std=std3), vision.HWC2CHW()]
    if not is_training:
        pct = DEFAULT_CROP_PCT if crop_pct is None else float(crop_pct)
        if not 0 < pct <= 1:
            raise DataError(f"crop_pct {crop_pct} must be within (0, 1]")
        if inception_crop:
            head = [CentralCrop(pct), vision.Resize((size, size), inter)]
        else:
            head = [vision.Resize(int(size / pct), inter), vision.CenterCrop(size)]
        return ([vision.Decode()] if decode else []) + head + tail
    if not decode:
        raise DataError("decode=False is for evaluation transforms only (training decodes inside its random crop)")

    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise DataError(f"scale {tuple(scale)} must be (min, max) with 0 < min <= max <= 1")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise DataError(f"ratio {tuple(ratio)} must be (min, max) with 0 < min <= max")
    for name, p in (("hflip", hflip), ("vflip", vflip)):
        if not 0 <= p <= 1:
            raise DataError(f"{name} {p} must be a probability within [0, 1]")
    ops: List[Any] = [vision.RandomCropDecodeResize(size, scale=tuple(map(float, scale)),
                                                    ratio=tuple(map(float, ratio)), interpolation=inter)]
    if hflip > 0:
        ops.append(vision.RandomHorizontalFlip(prob=float(hflip)))
    if vflip > 0:
        ops.append(vision.RandomVerticalFlip(prob=float(vflip)))
    if auto_augment:
        fill = tuple(min(255, int(round(m))) for m in mean3)
        ops.append(_auto_augment_op(auto_augment, inter, fill))
    elif color_jitter:
        cj = float(color_jitter)
        ops.append(vision.RandomColorAdjust(brightness=cj, contrast=cj, saturation=cj))
    ops += tail
    if re_prob and re_prob > 0:
        ops.append(RandomErasing(re_prob, re_scale, re_ratio, re_value, re_max_attempts))
    return ops
