"""Fine-tuning with a frozen backbone: frozen layers, and training the head on cached features.

``freeze_layer: N`` freezes ``features[0..N-1]`` (``backbone``: every entry of ``features``): their
parameters leave the optimizer (no slots), their BatchNorm runs in inference mode (statistics kept
bit for bit), and with no trainable parameter and no gradient-requiring input before them MindSpore
prunes their backward pass (measured: a frozen-backbone step costs ~1/4 of a full one).

With the whole backbone frozen and a deterministic input pipeline, the backbone's pooled features
of every training and validation image are computed once (and saved in the run directory, reused
when the run is resumed with the same checkpoint and data); the head then trains on them, so an
epoch costs a few matrix products. With random augmentation the images differ every epoch, so the
frozen backbone runs at every step instead (without gradients). The log says which path runs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

if TYPE_CHECKING:
    from mindspore import Tensor, nn

log = logging.getLogger("mindcv_mnv2")


def freeze(net: nn.Cell, n: int) -> List[str]:
    """Freeze ``net.features[:n]``: no gradients, no optimizer state; the names of their parameters."""
    names: List[str] = []
    for i in range(n):
        for p in net.features[i].get_parameters():
            p.requires_grad = False
            names.append(p.name)
    return names


def set_frozen_eval(net: nn.Cell, n: int) -> None:
    """BatchNorm of the frozen layers in inference mode (call after the train step's set_train(True))."""
    for i in range(n):
        net.features[i].set_train(False)


class PooledFeatures:
    """The network up to global average pooling, in eval mode: images -> (N, num_features) numpy."""

    def __init__(self, net) -> None:
        from mindspore import nn

        from ..models.mobilenetv2 import GlobalAvgPool

        class _Pooled(nn.Cell):
            def __init__(self, features):
                super().__init__(auto_prefix=False)
                self.features, self.pool = features, GlobalAvgPool()

            def construct(self, x):
                return self.pool(self.features(x))

        self.cell = _Pooled(net.features)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import mindspore as ms

        self.cell.set_train(False)
        return self.cell(ms.Tensor(images)).asnumpy()


def head_net(net: nn.Cell) -> nn.Cell:
    """A cell computing ``net``'s classifier (dropout + dense) on pooled features; same Parameters, names."""
    from mindspore import nn

    class Head(nn.Cell):
        def __init__(self, classifier):
            super().__init__(auto_prefix=False)
            self.classifier = classifier

        def construct(self, x):
            return self.classifier(x)

    return Head(net.classifier)


def weights_signature(net: nn.Cell) -> str:
    """A digest of the backbone's tensors (what its features depend on; the same after a resume)."""
    h = hashlib.sha256()
    for p in net.features.get_parameters():
        h.update(p.name.encode())
        h.update(p.asnumpy().tobytes())
    return h.hexdigest()


def cache_key(weights: str, files: Sequence[str], transform_desc: Any) -> str:
    """What the cached features depend on: the backbone's weights, the image files, the preprocessing."""
    h = hashlib.sha256(weights.encode())
    for f in files:
        s = os.stat(f)
        h.update(f"{f}|{s.st_size}|{s.st_mtime_ns}".encode())
    h.update(json.dumps(transform_desc, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def compute_or_load(path: Optional[str], extract: PooledFeatures, batches: Iterator[Tuple[np.ndarray, np.ndarray]],
                    what: str) -> np.ndarray:
    """Pooled features of every image in ``batches`` (file order), from ``path`` when it was saved before."""
    if path and os.path.isfile(path):
        try:
            with np.load(path) as data:
                log.info("cached features: reusing %s (%s, %d images)", path, what, len(data["features"]))
                return data["features"]
        except (OSError, ValueError, KeyError):
            log.warning("cached features %s are unreadable; computing them again", path)
    out = [extract(np.asarray(images)) for images, _ in batches]
    feats = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez(tmp, features=feats)
        os.replace(tmp, path)
    return feats


class FeatureLoader:
    """Batches of cached features in the order the image loader would read the images, epoch by epoch.

    Quacks like data.Loader where the trainer uses it (``set_epoch``, ``dataset.create_tuple_iterator``,
    ``steps_per_epoch``, counts), so the training loop, resume and checkpoints stay the same.
    """

    def __init__(self, features: np.ndarray, image_loader, batch_size: int, drop_remainder: bool) -> None:
        self.features = features
        self.image_loader = image_loader
        self.labels = np.asarray(image_loader.labels, np.int32)
        self.batch_size = int(batch_size)
        self.drop_remainder = drop_remainder
        self.steps_per_epoch = image_loader.steps_per_epoch
        self.num_images_total = image_loader.num_images_total
        self.class_names = image_loader.class_names
        self.skipped = getattr(image_loader, "skipped", [])
        self._epoch = 0
        self.dataset = self

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next pass reads."""
        self._epoch = int(epoch)

    def create_tuple_iterator(self, num_epochs: int = 1, output_numpy: bool = False
                              ) -> Iterator[Union[Tuple[np.ndarray, np.ndarray], Tuple[Tensor, Tensor]]]:
        """(features, labels) batches of the current epoch as Tensors (numpy with output_numpy)."""
        import mindspore as ms

        order = self.image_loader.epoch_indices(self._epoch)
        for s in range(self.steps_per_epoch):
            idx = order[s * self.batch_size:(s + 1) * self.batch_size]
            f, y = self.features[idx], self.labels[idx]
            yield (f, y) if output_numpy else (ms.Tensor(f), ms.Tensor(y))
