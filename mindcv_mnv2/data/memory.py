"""Training images decoded once into RAM and augmented a whole batch at a time with numpy.

For a small dataset whose images already have the training size (Fashion-MNIST's 32 px PNGs,
CIFAR-like folders) and whose recipe only flips and normalises, the per-image MindSpore pipeline
spends its time decoding and moving single images: on the 2-core CPU demo it took ~23 s of CPU per
epoch (60,000 images) against ~0.7 s for the same batches from a decoded array, and training
from the array ran 9-24% faster (interleaved pairs). :func:`batch_plan` accepts a transform list only when numpy
reproduces it: the random crop must keep the whole image (scale and ratio (1, 1)) and every image
must decode to the crop size, where MindSpore's resize is the identity (checked bit-for-bit for
all four interpolations by tests/test_data_memory.py); the flips and Normalize then match
MindSpore's in distribution and to float rounding. Anything else (random crops, colour jitter,
auto-augment, other sizes) keeps the MindSpore pipeline.

Sample order still comes from the loader's ShardSampler; each batch's flips are drawn from
(seed, shard, epoch, step), so a resumed epoch repeats the same batches without replaying the
ones it skips.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger("mindcv_mnv2")

# The decoded split may take at most this share of the memory available when the loader is built
# (split among the processes of a launch): the rest stays for MindSpore, the pipeline and the OS.
MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class BatchPlan:
    """Per-batch numpy equivalent of a flip-and-normalise training transform list."""

    size: int
    hflip: float
    vflip: float
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


def batch_plan(transforms: Sequence[Any]) -> Tuple[Optional[BatchPlan], str]:
    """The numpy plan that reproduces these per-image training ops, or (None, why not)."""
    ops = list(transforms)
    names = [type(op).__name__ for op in ops]
    if not ops or names[0] != "RandomCropDecodeResize":
        return None, "the transforms do not start with the training random crop"
    crop = ops[0]
    if tuple(crop.scale) != (1.0, 1.0) or tuple(crop.ratio) != (1.0, 1.0):
        return None, f"random crops (scale {tuple(crop.scale)}, ratio {tuple(crop.ratio)}) need per-image ops"
    size = tuple(crop.size) if isinstance(crop.size, (tuple, list)) else (crop.size, crop.size)
    if size[0] != size[1]:
        return None, f"crop size {size} is not square"
    if names[-2:] != ["Normalize", "HWC2CHW"] or not getattr(ops[-2], "is_hwc", True):
        return None, "the transforms do not end with Normalize and HWC2CHW"
    flips = {"RandomHorizontalFlip": 0.0, "RandomVerticalFlip": 0.0}
    for name, op in zip(names[1:-2], ops[1:-2]):
        if name not in flips or flips[name]:
            return None, f"{name} needs per-image ops"
        flips[name] = float(op.prob)
    mean, std = ops[-2].mean, ops[-2].std
    return BatchPlan(int(size[0]), flips["RandomHorizontalFlip"], flips["RandomVerticalFlip"],
                     tuple(float(m) for m in mean), tuple(float(s) for s in std)), ""


def available_memory() -> Optional[int]:
    """Bytes of memory available to new allocations (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def decode_all(source: Any, size: int, workers: int, chunk: int = 256) -> Tuple[Optional[np.ndarray], str]:
    """Every image of ``source`` (EncodedImages) decoded to one uint8 [N, size, size, 3] array, or (None, why not).

    Decoding uses MindSpore's Decode, the op the per-image pipeline runs, so pixels are the same;
    chunks of ``chunk`` images cross into Python at once (per image, that crossing cost 40% more).
    """
    import mindspore.dataset as ds
    import mindspore.dataset.vision as vision

    shape = (size, size, 3)

    def stack(images, labels, _info):
        # The second column becomes "does image i have the crop size": MindSpore cannot batch
        # images of different shapes, and its error would not say which file.
        fits = np.array([im.shape == shape for im in images], np.bool_)
        return (np.stack(images) if fits.all() else np.zeros((len(images),) + shape, np.uint8)), fits

    out = np.empty((len(source),) + shape, np.uint8)
    dataset = ds.GeneratorDataset(source, column_names=["image", "label"], shuffle=False, num_parallel_workers=1,
                                  python_multiprocessing=False)
    dataset = dataset.map(operations=[vision.Decode()], input_columns="image", num_parallel_workers=workers)
    dataset = dataset.batch(chunk, per_batch_map=stack, input_columns=["image", "label"], num_parallel_workers=1,
                            python_multiprocessing=False)
    start = 0
    for images, fits in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
        if not fits.all():
            first = start + int(np.argmin(fits))
            return None, f"{source.files[first]} does not decode to {size}x{size} px"
        out[start:start + len(images)] = images
        start += len(images)
    return out, ""


class DecodedBatches:
    """Stands where the loader keeps its MindSpore dataset: each ``create_tuple_iterator`` is one epoch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, plan: BatchPlan, sampler: Any, batch_size: int,
                 steps: int, seed: int, shard_id: int,
                 batch_ops: Optional[Callable[[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]] = None):
        self.images, self.labels, self.plan, self.sampler = images, np.asarray(labels, np.int32), plan, sampler
        self.batch_size, self.steps = int(batch_size), int(steps)  # steps: the loader's count per epoch
        self.seed, self.shard_id, self.batch_ops = int(seed), int(shard_id), batch_ops
        # (x - mean) / std as MindSpore's Normalize computes it, per channel of NCHW
        self.mean = np.asarray(plan.mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(plan.std, np.float32).reshape(1, 3, 1, 1)

    def get_dataset_size(self) -> int:
        """Batches per epoch."""
        return self.steps

    def batch(self, epoch: int, step: int, indices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Batch ``step`` of ``epoch`` for these image indices: float32 NCHW images and labels."""
        x = self.images[indices]  # fancy indexing copies, so flipping in place leaves the cache alone
        rng = np.random.default_rng([self.seed, self.shard_id, int(epoch), int(step)])
        for prob, axis in ((self.plan.hflip, 2), (self.plan.vflip, 1)):
            if prob > 0:
                flip = rng.random(len(x)) < prob
                x[flip] = np.flip(x[flip], axis=axis)
        chw = (x.transpose(0, 3, 1, 2).astype(np.float32) - self.mean) / self.std
        labels = self.labels[indices]
        if self.batch_ops is not None:
            chw, labels = self.batch_ops(chw, labels)
        return np.ascontiguousarray(chw), labels

    def create_tuple_iterator(self, num_epochs: int = 1, output_numpy: bool = False) -> Iterator[Tuple[Any, Any]]:
        """The next epoch's batches (the sampler's next epoch), as Tensors (numpy with output_numpy)."""
        epoch = self.sampler.next_epoch
        self.sampler.next_epoch += 1
        order = self.sampler.indices(epoch)
        return self._batches(epoch, order, output_numpy)

    def _batches(self, epoch: int, order: np.ndarray, output_numpy: bool) -> Iterator[Tuple[Any, Any]]:
        import mindspore as ms

        for step in range(self.get_dataset_size()):
            images, labels = self.batch(epoch, step, order[step * self.batch_size:(step + 1) * self.batch_size])
            yield (images, labels) if output_numpy else (ms.Tensor(images), ms.Tensor(labels))


def try_decoded_batches(source: Any, transforms: Sequence[Any], num_processes: int, workers: int,
                        **batches_kwargs: Any) -> Tuple[Optional[DecodedBatches], str]:
    """DecodedBatches over ``source`` when its transforms allow it and it fits in memory, else (None, why not)."""
    plan, why = batch_plan(transforms)
    if plan is None:
        return None, why
    need = len(source) * plan.size * plan.size * 3
    avail = available_memory()
    budget = None if avail is None else int(avail * MEMORY_SHARE / max(int(num_processes), 1))
    if budget is None or need > budget:
        have = "unknown memory" if budget is None else f"{budget / 2**20:,.0f} MiB, a quarter of the free memory"
        return None, f"{len(source):,} decoded images need {need / 2**20:,.0f} MiB; the budget is {have}"
    t0 = time.perf_counter()
    log.info("data_cache: decoding %s training images into memory (%.0f MiB)...", f"{len(source):,}", need / 2**20)
    images, why = decode_all(source, plan.size, workers)
    if images is None:
        return None, why
    log.info("data_cache: decoded in %.1f s; flips and normalisation now run per batch in numpy",
             time.perf_counter() - t0)
    return DecodedBatches(images, source.labels, plan, **batches_kwargs), ""
