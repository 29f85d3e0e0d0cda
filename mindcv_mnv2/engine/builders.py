"""Config -> objects: network, data loaders, LR array, optimizer, loss and train step, each built
from the recipe keys that configure it and handed plain arguments (models, data, optim take no
Config), so a key is followed from the schema to its consumer in one hop.

Besides this module, the trainer reads only the keys of its own loop (device and mode, run
directory, resume source, epochs, intervals, EMA/AMP switches) and validation those of what it
scores (checkpoint path, batch, EMA); each schema field's comment names its reader.
"""
from __future__ import annotations

import logging

import numpy as np
from typing import TYPE_CHECKING, AbstractSet, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ..config import FIELDS, Config, ConfigError
from ..distributed import DistInfo

if TYPE_CHECKING:
    from mindspore import nn

    from ..data.loader import Loader
    from .train_step import TrainStep

log = logging.getLogger("mindcv_mnv2")


def transform_args(cfg: Config) -> Dict[str, Any]:
    """Keyword arguments of data.create_transforms from the recipe."""
    return dict(scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, vflip=cfg.vflip, color_jitter=cfg.color_jitter,
                interpolation=cfg.interpolation, auto_augment=cfg.auto_augment, re_prob=cfg.re_prob,
                re_scale=cfg.re_scale, re_ratio=cfg.re_ratio, re_value=cfg.re_value,
                re_max_attempts=cfg.re_max_attempts, mean=cfg.mean, std=cfg.std, crop_pct=cfg.crop_pct,
                inception_crop=cfg.inception_crop)


def eval_facts(cfg: Config) -> Dict[str, Any]:
    """How the recipe scores images, as checkpoints record it (validate.py and predict read it back)."""
    return {"image_size": cfg.image_resize, "crop_pct": cfg.crop_pct, "interpolation": cfg.interpolation,
            "mean": list(cfg.mean), "std": list(cfg.std), "inception_crop": cfg.inception_crop}


def build_val_loader(cfg: Config, dist: DistInfo, class_names: Optional[Sequence[str]] = None,
                     image_size: Optional[int] = None, **eval_overrides: Any) -> Loader:
    """Validation loader over val_split: exact shards, nothing dropped."""
    from ..data import create_loader, create_transforms, scan_image_folder

    images = scan_image_folder(cfg.data_dir, cfg.val_split, class_names=class_names)
    targs = {**transform_args(cfg), **eval_overrides}
    transforms = create_transforms(False, image_size or cfg.image_resize, **targs)
    loader = create_loader(images, batch_size=cfg.batch_size, is_training=False, transforms=transforms,
                           shuffle=cfg.eval_shuffle, drop_remainder=False,
                           num_parallel_workers=cfg.num_parallel_workers, shard_id=dist.rank,
                           num_shards=dist.world, seed=cfg.seed, num_classes=len(images.class_names))
    loader.skipped = list(images.skipped)
    return loader


def build_train_loader(cfg: Config, dist: DistInfo) -> Loader:
    """Training loader over train_split, sharded by rank, with mixup/cutmix when set."""
    from ..data import create_loader, create_transforms, scan_image_folder

    images = scan_image_folder(cfg.data_dir, cfg.train_split)
    num_classes = len(images.class_names)
    if cfg.num_classes is not None and cfg.num_classes != num_classes:
        raise ConfigError(f"num_classes: the recipe says {cfg.num_classes} but {cfg.data_dir}/{cfg.train_split} "
                          f"has {num_classes} class folders; fix num_classes (or remove it to use the folders)")
    transforms = create_transforms(True, cfg.image_resize, **transform_args(cfg))
    loader = create_loader(images, batch_size=cfg.batch_size, is_training=True, transforms=transforms,
                           shuffle=cfg.shuffle, drop_remainder=cfg.drop_remainder,
                           num_parallel_workers=cfg.num_parallel_workers, num_samples=cfg.num_samples,
                           shard_id=dist.rank, num_shards=dist.world, seed=cfg.seed, num_classes=num_classes,
                           mixup=cfg.mixup, cutmix=cfg.cutmix, cutmix_prob=cfg.cutmix_prob,
                           mixup_switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.label_smoothing,
                           data_cache=cfg.data_cache)
    loader.skipped = list(images.skipped)  # reported in the epoch summaries
    if loader.steps_per_epoch < 1:
        raise ConfigError(f"batch_size: {cfg.batch_size} x {dist.world} device(s) is larger than the "
                          f"{loader.num_images_total} training images with drop_remainder=True, so an epoch has no "
                          f"step; lower batch_size or set drop_remainder False")
    return loader


# Architecture facts that travel with the weights: a checkpoint records them in its model_kwargs.
ARCHITECTURE_FACTS = ("padding", "output_stride", "drop_rate")


def model_kwargs(cfg: Config, num_classes: int, ckpt_kwargs: Optional[Mapping[str, Any]] = None,
                 explicit_keys: Optional[AbstractSet[str]] = None, ckpt_path: str = "") -> Dict[str, Any]:
    """Constructor arguments of models.create_model: the one path from recipe (and checkpoint) to network.

    A key the user set (``explicit_keys``; None means all of them) comes from the recipe; an
    architecture fact the user left unset comes from the checkpoint the run starts from or
    scores. Padding is what the weights were trained with: asking for another one is an error,
    because it would silently change every output.
    """
    kw: Dict[str, Any] = {"num_classes": num_classes, "in_channels": cfg.in_channels, "padding": cfg.padding,
                          "output_stride": cfg.output_stride}
    if cfg.drop_rate is not None:
        kw["drop_rate"] = cfg.drop_rate
    explicit = FIELDS.keys() if explicit_keys is None else explicit_keys
    for key in ARCHITECTURE_FACTS:
        if key not in (ckpt_kwargs or {}):
            continue
        theirs = ckpt_kwargs[key]
        if key not in explicit:
            kw[key] = theirs
        elif key == "padding" and cfg.padding != theirs:
            raise ConfigError(f"padding: {ckpt_path} was made with padding '{theirs}'; building it with "
                              f"'{cfg.padding}' would silently change every output. Drop --padding (or set "
                              f"padding: {theirs})")
    return kw


def build_model(cfg: Config, kwargs: Mapping[str, Any], device_target: str) -> nn.Cell:
    """The network named by ``model`` with ``kwargs`` (model_kwargs) on the recipe's depthwise kernel.

    Its initial weights depend on ``seed`` alone. Weights are loaded by the caller (checkpoint.load_weights).
    """
    from ..models import create_model

    # MindSpore's initializers draw from numpy's global generator: seeded here, whatever ran before in
    # this process (a distributed start-up, other tests' draws) cannot shift them; its state is restored.
    state = np.random.get_state()
    np.random.seed(cfg.seed)
    try:
        net = create_model(cfg.model, **kwargs)
    finally:
        np.random.set_state(state)
    return with_depthwise_kernel(cfg, net, device_target)


def with_depthwise_kernel(cfg: Config, net: nn.Cell, device_target: str) -> nn.Cell:
    """``net`` with its depthwise convs on the kernel ``depthwise_kernel`` resolves to on this device."""
    from ..ops import KernelBuildError, apply_depthwise_kernel

    try:
        apply_depthwise_kernel(net, cfg.depthwise_kernel, device_target)
    except KernelBuildError as exc:
        raise ConfigError(f"depthwise_kernel: {exc}") from None
    return net


def frozen_layers(cfg: Config, net: nn.Cell) -> int:
    """How many entries of ``net.features`` ``freeze_layer`` freezes (0: none; backbone: all)."""
    fl = cfg.freeze_layer.strip().lower()
    if fl == "none":
        return 0
    if not (cfg.ckpt_path or cfg.resume):
        raise ConfigError("freeze_layer: freezing layers of random weights trains nothing useful; set ckpt_path to "
                          "the pretrained checkpoint (or resume a fine-tuning run)")
    return len(net.features) if fl == "backbone" else min(int(fl), len(net.features))


def feature_cache_plan(cfg: Config, frozen: int, total: int) -> Tuple[bool, str]:
    """(train the head on cached features?, why): the whole backbone frozen and images that never change."""
    if frozen < total:
        return False, ("the backbone runs every step" if frozen else "")
    random = [k for k, on in (("hflip", cfg.hflip > 0), ("vflip", cfg.vflip > 0), ("color_jitter", bool(cfg.color_jitter)),
                              ("auto_augment", bool(cfg.auto_augment)), ("re_prob", cfg.re_prob > 0),
                              ("mixup", cfg.mixup > 0), ("cutmix", cfg.cutmix > 0),
                              ("scale/ratio", tuple(cfg.scale) != (1.0, 1.0) or tuple(cfg.ratio) != (1.0, 1.0)))
              if on]
    if random:
        return False, (f"the frozen backbone runs every step (without gradients): random augmentation "
                       f"({', '.join(random)}) changes the images every epoch")
    if not cfg.cache_features:
        return False, "the frozen backbone runs every step (cache_features: False)"
    return True, "the head trains on the backbone's features, computed once (no random augmentation)"


def feature_batches(cfg: Config, loader: Loader, training: bool) -> Tuple[Iterator[List[np.ndarray]], Dict[str, Any]]:
    """Batches of ``loader``'s images in file order with the run's deterministic transforms (for caching)."""
    from ..data import ImageList, create_loader, create_transforms

    images = ImageList(files=list(loader.files), labels=np.asarray(loader.labels), class_names=list(loader.class_names))
    transforms = create_transforms(training, cfg.image_resize, **transform_args(cfg))
    ordered = create_loader(images, batch_size=cfg.batch_size, is_training=False, transforms=transforms,
                            shuffle=False, num_parallel_workers=cfg.num_parallel_workers)
    desc = {"training": training, "size": cfg.image_resize, **transform_args(cfg)}
    return ordered.dataset.create_tuple_iterator(num_epochs=1, output_numpy=True), desc


def build_lr(cfg: Config, updates_per_epoch: int) -> np.ndarray:
    """Per-update learning rates for the whole run."""
    from ..optim import create_lr_schedule

    return create_lr_schedule(cfg.scheduler, cfg.lr, updates_per_epoch, cfg.epoch_size,
                              warmup_epochs=cfg.warmup_epochs, warmup_factor=cfg.warmup_factor, min_lr=cfg.min_lr,
                              decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate,
                              milestones=cfg.multi_step_decay_milestones, lr_epoch_stair=cfg.lr_epoch_stair,
                              num_cycles=cfg.num_cycles, cycle_decay=cfg.cycle_decay)


def build_optimizer(cfg: Config, net: nn.Cell, lr: Union[float, np.ndarray]) -> nn.Optimizer:
    """Optimizer over the network's trainable parameters (momentum as one C++ operator where the
    network runs on the C++ kernels, i.e. on CPU, where training is float32)."""
    from ..ops import kernel_in_use
    from ..optim import create_optimizer

    fused = kernel_in_use(net) == "aot"
    return create_optimizer(net.trainable_params(), cfg.opt, lr, momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay, weight_decay_filter=cfg.weight_decay_filter,
                            use_nesterov=cfg.use_nesterov, eps=cfg.eps, rmsprop_decay=cfg.rmsprop_decay, fused=fused)


def build_loss(cfg: Config, num_classes: int) -> nn.Cell:
    """Training loss (label smoothing is folded into soft labels when mixup/cutmix is on)."""
    from ..optim import create_loss

    soft = cfg.mixup > 0 or cfg.cutmix > 0
    return create_loss(cfg.loss, num_classes, 0.0 if soft else cfg.label_smoothing, cfg.reduction)


def build_train_step(cfg: Config, net: nn.Cell, loss_fn: nn.Cell, optimizer: nn.Optimizer, dist: DistInfo,
                     frozen: Sequence[str] = ()) -> TrainStep:
    """The compiled step with the recipe's loss scaling, clipping, EMA and accumulation."""
    from .train_step import TrainStep

    reducer = None
    if dist.world > 1:
        from mindspore import nn

        reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=dist.world)
    return TrainStep(net, loss_fn, optimizer, loss_scale=cfg.loss_scale,
                     dynamic_loss_scale=cfg.loss_scale_type in ("dynamic", "auto"),
                     drop_overflow_update=cfg.drop_overflow_update, clip_grad=cfg.clip_grad,
                     clip_value=cfg.clip_value, ema_decay=cfg.ema_decay if cfg.ema else None,
                     accumulate=cfg.gradient_accumulation_steps, grad_reducer=reducer, ema_exclude=frozen)
