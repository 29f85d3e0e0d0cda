"""Facts with one owner: the lists of choices and the defaults that several modules need.

Standard library only, so the config schema imports it without MindSpore. Every consumer imports
from here (as timm's models import ``IMAGENET_DEFAULT_MEAN``); nothing else spells these values.
"""
from __future__ import annotations

from typing import Dict, Tuple

# ---- networks (models.MobileNetV2, models.registry, checkpoint, summary)
# registry tag -> width multiplier: MindCV's and TF-slim's published widths
WIDTHS: Dict[str, float] = {"035": 0.35, "050": 0.5, "075": 0.75, "100": 1.0, "130": 1.3, "140": 1.4}
EVAL_SIZES: Tuple[int, ...] = (224, 192, 160, 128, 96)  # TF-slim's / MindCV's resolution grid
PADDINGS: Tuple[str, ...] = ("symmetric", "tf_same")  # MindCV/torchvision, TensorFlow/Keras weights
OUTPUT_STRIDES: Tuple[int, ...] = (8, 16, 32)
DEFAULT_DROP_RATE = 0.2  # MindCV's dropout before the classifier
DEPTHWISE_KERNELS: Tuple[str, ...] = ("auto", "native", "aot")  # ops.apply_depthwise_kernel
# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA values) and auto / DEFAULT (ops.cpu_isa.choose)
CPU_ISA_CHOICES: Tuple[str, ...] = ("auto", "DEFAULT", "AVX512_CORE_AMX", "AVX512_CORE_BF16", "AVX512_CORE_VNNI",
                                    "AVX512_CORE", "AVX2_VNNI", "AVX2", "AVX", "SSE41")

# ---- evaluation preprocessing (models.registry entries, data.create_transforms defaults)
IMAGENET_MEAN: Tuple[float, float, float] = (123.675, 116.28, 103.53)  # RGB on 0-255 pixels
IMAGENET_STD: Tuple[float, float, float] = (58.395, 57.12, 57.375)
DEFAULT_CROP_PCT = 0.875
DEFAULT_INTERPOLATION = "bilinear"
INTERPOLATIONS: Tuple[str, ...] = ("bilinear", "bicubic", "nearest", "area")

# ---- training (optim, data)
OPTIMIZERS: Tuple[str, ...] = ("momentum", "sgd", "rmsprop", "adam", "adamw")
SCHEDULERS: Tuple[str, ...] = ("constant", "cosine_decay", "exponential_decay", "step_decay", "multi_step_decay")
WEIGHT_DECAY_FILTERS: Tuple[str, ...] = ("disable", "auto", "norm_and_bias")
AUTO_AUGMENT_PREFIXES: Tuple[str, ...] = ("randaug", "autoaug", "autoaugr", "trivialaugwide")
DATA_CACHE_CHOICES: Tuple[str, ...] = ("auto", "off")  # data.create_loader: decoded-in-memory training batches
