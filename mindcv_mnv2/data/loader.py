"""The MindSpore input pipeline over a scanned ImageFolder, with exact sharding.

Source: a random-access Python object that returns each file's ENCODED bytes
(``np.fromfile``, read by one thread) and its label; all decoding and augmentation run as C++
vision ops in one ``.map`` with ``num_parallel_workers`` threads. The only Python after that is
one numpy call per BATCH for random erasing and Mixup/CutMix when they are on. With
``data_cache="auto"`` a training split that only needs flips and normalising is instead decoded
once into memory and served by :class:`mindcv_mnv2.data.memory.DecodedBatches` (same sampler).

Sample order is decided by :class:`ShardSampler`, not by MindSpore's samplers:

- training: every epoch all ranks draw the same permutation from (seed, epoch) and rank r takes
  positions r, r+S, ... of it, padded by wrap-around to ceil(N/S) so every rank runs the same
  number of steps (DistributedSampler semantics): shards are disjoint except for < S padded images;
- evaluation: rank r takes images r, r+S, ... exactly once, so the union over ranks is the whole
  split with no padding or duplicate; shards may differ by one image and the last partial batch
  is kept. ``Loader.num_images`` is this shard's count so correct predictions can be summed.

Broken files: see :mod:`mindcv_mnv2.data.folder` (checked at scan time). A file that passes the
header check but fails to decode stops the pipeline with MindSpore's error; we do not switch
MindSpore to its global "replace/skip erroneous samples" mode because it is process-wide, would
silently change evaluation counts, and dumps the offending image into the working directory.
:func:`pipeline_error` turns that error into a DataError pointing at
``python -m mindcv_mnv2.data.verify DATA_DIR --split S``, which (via :func:`verify_images`) names
such files.

Random ops draw from MindSpore's dataset seed (``mindspore.dataset.config.set_seed``), which the
engine sets; shard order, num_samples, random erasing and Mixup use ``seed`` given here.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..constants import DATA_CACHE_CHOICES
from .folder import DataError, ImageList, scan_image_folder
from .mixup import Mixup
from .transforms import RandomErasing, create_transforms

log = logging.getLogger("mindcv_mnv2")


def cpu_count() -> int:
    """CPUs this process may use (respects affinity masks, e.g. mpirun's core binding)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _sampler_base():
    import mindspore.dataset as ds

    return ds.Sampler


def shard_indices(n: int, epoch: int, *, shard_id: int, num_shards: int, shuffle: bool, seed: int,
                  pad: bool) -> np.ndarray:
    """Indices (into the image list) that shard ``shard_id`` reads in ``epoch``."""
    if shuffle:
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    else:
        order = np.arange(n)
    if pad and n % num_shards:
        total = math.ceil(n / num_shards) * num_shards
        order = np.resize(order, total)  # wrap-around repeat, like torch's DistributedSampler
    return order[shard_id::num_shards].astype(np.int64)


def _make_sampler(n: int, shard_id: int, num_shards: int, shuffle: bool, seed: int, pad: bool):
    base = _sampler_base()

    class ShardSampler(base):
        """Yields this shard's indices; each pass (one per epoch) uses the next epoch number."""

        def __init__(self):
            self.n, self.shard_id, self.num_shards = n, shard_id, num_shards
            self.shuffle, self.seed, self.pad = shuffle, seed, pad
            self.next_epoch = 0
            self.count = (math.ceil(n / num_shards) if pad else len(range(shard_id, n, num_shards)))
            super().__init__()

        def indices(self, epoch: int) -> np.ndarray:
            return shard_indices(self.n, epoch, shard_id=self.shard_id, num_shards=self.num_shards,
                                 shuffle=self.shuffle, seed=self.seed, pad=self.pad)

        def __iter__(self):
            epoch = self.next_epoch
            self.next_epoch += 1
            return iter(self.indices(epoch).tolist())

        def __len__(self) -> int:
            return self.count

    return ShardSampler()


class EncodedImages:
    """Random-access source: (encoded file bytes as uint8 [n], int32 label)."""

    def __init__(self, files: Sequence[str], labels: np.ndarray):
        self.files = list(files)
        self.labels = np.asarray(labels, dtype=np.int32)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return np.fromfile(self.files[index], dtype=np.uint8), self.labels[index]

    def __len__(self) -> int:
        return len(self.files)


class BatchOps:
    """One numpy pass per batch: random erasing, then Mixup/CutMix (soft labels)."""

    def __init__(self, erasing: Optional[RandomErasing], mixup: Optional[Mixup]):
        self.erasing, self.mixup = erasing, mixup

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        if self.erasing is not None:
            images = self.erasing.erase_batch(images)
        if self.mixup is not None:
            images, labels = self.mixup(images, labels)
        return images, labels


@dataclass
class Loader:
    """A built input pipeline and the counts the engine needs."""

    dataset: Any
    num_images: int
    steps_per_epoch: int
    class_names: List[str]
    num_images_total: int
    batch_size: int
    shard_id: int
    num_shards: int
    files: List[str]
    labels: np.ndarray
    soft_labels: bool
    sampler: Any

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass over ``dataset`` read epoch ``epoch``'s order (for resuming)."""
        self.sampler.next_epoch = int(epoch)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Indices into ``files`` this shard reads in ``epoch`` (in order)."""
        return self.sampler.indices(epoch)


def _split_ops(transforms: Sequence[Any]) -> Tuple[List[Any], Optional[RandomErasing]]:
    per_image = [t for t in transforms if not isinstance(t, RandomErasing)]
    erasing = [t for t in transforms if isinstance(t, RandomErasing)]
    if len(erasing) > 1:
        raise DataError("transforms contain more than one RandomErasing; keep one")
    if erasing and transforms[-1] is not erasing[0]:
        raise DataError("RandomErasing must be the last transform (it works on normalised CHW batches)")
    return per_image, (erasing[0] if erasing else None)


def _subset(images: ImageList, num_samples: Optional[int], seed: int) -> Tuple[List[str], np.ndarray]:
    files, labels = images.files, images.labels
    if num_samples is None or num_samples >= len(files):
        if num_samples is not None and num_samples > len(files):
            log.warning("num_samples %d is more than the %d images of %s; using all", num_samples, len(files),
                        os.path.join(images.root, images.split))
        return list(files), labels
    if num_samples < 1:
        raise DataError(f"num_samples {num_samples} must be a positive number of images (or None for all)")
    # A seeded random subset: the first N of the sorted list would be one or two classes.
    keep = np.sort(np.random.default_rng(int(seed)).choice(len(files), size=int(num_samples), replace=False))
    return [files[i] for i in keep], labels[keep]


def create_loader(images: Union[ImageList, str], batch_size: int, is_training: bool, *, transforms: Optional[list] = None,
                  shuffle: Optional[bool] = None, drop_remainder: Optional[bool] = None, num_parallel_workers: int = 4,
                  num_samples: Optional[int] = None, shard_id: int = 0, num_shards: int = 1, seed: int = 42,
                  num_classes: Optional[int] = None, mixup: float = 0.0, cutmix: float = 0.0,
                  cutmix_prob: float = 1.0, mixup_switch_prob: float = 0.5, label_smoothing: float = 0.0,
                  split: Optional[str] = None, image_size: int = 224, data_cache: str = "off") -> Loader:
    """Batched (image float32 NCHW, label) pipeline over an ImageList (or a data_dir + split).

    ``data_cache="auto"`` (training only) serves batches from images decoded into memory when
    :func:`mindcv_mnv2.data.memory.batch_plan` accepts the transforms and the split fits; else,
    and with ``"off"``, the per-image MindSpore pipeline below.
    """
    import mindspore.dataset as ds

    if isinstance(images, (str, os.PathLike)):
        images = scan_image_folder(os.fspath(images), split or ("train" if is_training else "val"))
    if int(batch_size) < 1:
        raise DataError(f"batch_size {batch_size} must be at least 1")
    if not (int(num_shards) >= 1 and 0 <= int(shard_id) < int(num_shards)):
        raise DataError(f"shard_id {shard_id} / num_shards {num_shards}: need 0 <= shard_id < num_shards")
    shuffle = is_training if shuffle is None else bool(shuffle)
    if drop_remainder is None:
        drop_remainder = is_training
    if not is_training and drop_remainder:
        log.warning("drop_remainder ignored for evaluation: every image is scored exactly once")
        drop_remainder = False
    if transforms is None:
        transforms = create_transforms(is_training, image_size)
    per_image, erasing = _split_ops(list(transforms))

    files, labels = _subset(images, num_samples, seed)
    n = len(files)
    if n < num_shards:
        raise DataError(f"{os.path.join(images.root, images.split)} has {n} images, fewer than the {num_shards} "
                        f"shards (devices); add images or use fewer devices")
    sampler = _make_sampler(n, int(shard_id), int(num_shards), shuffle, int(seed), pad=is_training)
    count = len(sampler)
    steps = count // batch_size if drop_remainder else math.ceil(count / batch_size)

    soft = bool(is_training and (mixup > 0 or cutmix > 0))
    mixer = None
    if soft:
        mixer = Mixup(num_classes if num_classes is not None else len(images.class_names), mixup, cutmix,
                      cutmix_prob, mixup_switch_prob, label_smoothing)
    if not is_training:
        erasing = None  # random erasing is a training augmentation
    stream = np.random.SeedSequence([int(seed), int(shard_id)]).spawn(2)
    if erasing is not None:
        erasing.reseed(stream[0])
    if mixer is not None:
        mixer.reseed(stream[1])

    workers = max(1, min(int(num_parallel_workers), cpu_count()))
    # One source worker, whatever ``workers`` is: with more, MindSpore 2.10's SamplerFn master
    # sleeps 0.1 s whenever the next worker's queue is momentarily empty, which capped 32 px
    # Fashion-MNIST at ~500 img/s (vs ~7000 with one). A single thread reading bytes inline keeps
    # up with far more images per second than the decode map can process, even for 512 px photos.
    if data_cache not in DATA_CACHE_CHOICES:
        raise DataError(f"data_cache {data_cache!r} must be one of {', '.join(DATA_CACHE_CHOICES)}")
    batch_ops = BatchOps(erasing, mixer) if erasing is not None or mixer is not None else None
    dataset = None
    if is_training and data_cache == "auto":
        dataset = _decoded_batches(EncodedImages(files, labels), per_image, images, num_shards, workers,
                                   sampler=sampler, batch_size=int(batch_size), steps=steps, seed=int(seed),
                                   shard_id=int(shard_id), batch_ops=batch_ops)
    if dataset is None:
        dataset = ds.GeneratorDataset(EncodedImages(files, labels), column_names=["image", "label"], sampler=sampler,
                                      num_parallel_workers=1, python_multiprocessing=False)
        dataset = dataset.map(operations=per_image, input_columns="image", num_parallel_workers=workers)
        dataset = dataset.batch(int(batch_size), drop_remainder=bool(drop_remainder))
        if batch_ops is not None:
            dataset = dataset.map(operations=batch_ops, input_columns=["image", "label"],
                                  num_parallel_workers=1, python_multiprocessing=False)
    return Loader(dataset=dataset, num_images=count, steps_per_epoch=steps, class_names=list(images.class_names),
                  num_images_total=n, batch_size=int(batch_size), shard_id=int(shard_id), num_shards=int(num_shards),
                  files=files, labels=labels, soft_labels=soft, sampler=sampler)


def _decoded_batches(source: EncodedImages, per_image: Sequence[Any], images: ImageList, num_shards: int,
                     workers: int, **kwargs: Any):
    from .memory import try_decoded_batches

    try:
        dataset, why = try_decoded_batches(source, per_image, num_shards, workers, **kwargs)
    except RuntimeError as exc:
        err = pipeline_error(exc, images.root, images.split)
        if err is None:
            raise
        raise err from None
    if dataset is None:
        log.info("data_cache auto: per-image MindSpore pipeline (%s)", why)
    return dataset


def pipeline_error(exc: BaseException, root: str, split: str) -> Optional[DataError]:
    """A DataError explaining a MindSpore pipeline failure caused by an undecodable file, else None."""
    text = str(exc)
    if "Decode" not in text and "decode" not in text:
        return None
    first = next((ln.strip() for ln in text.splitlines() if "Decode" in ln or "decode" in ln), text[:200])
    return DataError(f"an image in {os.path.join(root, split)} could not be decoded ({first[:200]}); list the "
                     f"broken files with: python -m mindcv_mnv2.data.verify {root} --split {split}, then delete "
                     f"or re-encode them")
