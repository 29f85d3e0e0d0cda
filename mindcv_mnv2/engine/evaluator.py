"""Exact evaluation: every image counts once, correct counts are summed across ranks."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Optional, Tuple

import numpy as np

from ..distributed import DistInfo, all_reduce_sum
from .progress import progress_bar

if TYPE_CHECKING:
    from mindspore import nn

    from ..data.loader import Loader


def topk_counts(logits: np.ndarray, labels: np.ndarray) -> Tuple[int, int, float]:
    """(top-1 correct, top-5 correct, summed cross-entropy) of one batch of logits."""
    logits = logits.astype(np.float64)
    k = min(5, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top1 = logits.argmax(axis=1)
    correct1 = int((top1 == labels).sum())
    correct5 = int((top == labels[:, None]).any(axis=1).sum())
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss_sum = float(-logp[np.arange(len(labels)), labels].sum())
    return correct1, correct5, loss_sum


def run_eval(forward: Callable[[np.ndarray], np.ndarray], batches: Iterable, num_images: int, batch_size: int,
             dist: DistInfo = DistInfo(), desc: str = "val", show_progress: bool = True) -> Dict[str, float]:
    """Score ``forward`` (images NCHW -> logits) over this rank's batches; sums over ranks.

    A short last batch is padded to ``batch_size`` so a compiled graph sees one shape, and
    the padding is cut from the logits before counting.
    """
    c1 = c5 = seen = 0
    loss_sum = 0.0
    start = time.perf_counter()
    steps = -(-num_images // batch_size)
    with progress_bar(total=steps, desc=desc, enabled=show_progress and dist.is_main) as bar:
        for images, labels in batches:
            images = np.asarray(images)
            labels = np.asarray(labels).astype(np.int64)
            n = len(labels)
            if n < batch_size:
                pad = np.zeros((batch_size - n,) + images.shape[1:], images.dtype)
                images = np.concatenate([images, pad])
            logits = np.asarray(forward(images))[:n]
            a, b, l = topk_counts(logits, labels)
            c1, c5, loss_sum, seen = c1 + a, c5 + b, loss_sum + l, seen + n
            bar.update(1)
            bar.set_postfix(top1=f"{100.0 * c1 / max(seen, 1):.2f}")
    elapsed = time.perf_counter() - start
    c1, c5, loss_sum, seen = all_reduce_sum([c1, c5, loss_sum, seen], dist)
    seen = int(round(seen))
    if seen == 0:
        raise RuntimeError("evaluation saw no images")
    return {"top1": 100.0 * c1 / seen, "top5": 100.0 * c5 / seen, "loss": loss_sum / seen,
            "num_images": seen, "correct_top1": int(round(c1)), "correct_top5": int(round(c5)),
            "images_per_sec": seen / max(elapsed, 1e-9)}


class EvalNet:
    """A compiled inference copy of the network, refreshed from training or EMA weights.

    Where the network runs on the C++ depthwise kernel (CPU), the copy has every BatchNorm folded
    into its convolution and runs on the C++ inference kernels (models.fold, ops.folded: whole
    inverted-residual blocks, convolutions with bias, ReLU6 and residual fused): the same outputs to
    float rounding, several times faster. Elsewhere the network itself is compiled.
    """

    def __init__(self, net, amp_level: str = "O0") -> None:
        import mindspore as ms

        from ..ops import kernel_in_use

        self._names = [p.name for p in net.get_parameters()]
        if amp_level == "O0" and kernel_in_use(net) == "aot":
            from ..models.fold import FoldedMobileNetV2
            from ..ops.folded import fused_block, fused_conv, fused_depthwise, fused_epilogue, fused_head

            net = FoldedMobileNetV2(net, fused_epilogue, fused_depthwise, fused_conv, fused_block, fused_head)
        self.net = net
        self.folded = hasattr(net, "refresh")
        self.net.set_train(False)
        if amp_level != "O0":
            ms.amp.auto_mixed_precision(self.net, amp_level)
        self._params = {p.name: p for p in self.net.get_parameters()}

    def load_from(self, params: Dict[str, object], prefix: str = "") -> None:
        """Take the network's tensors from a name->Parameter dict under ``prefix`` (e.g. 'ema.')."""
        def value(name: str):  # a frozen layer has no EMA copy: its weights are its average
            p = params[prefix + name] if prefix + name in params else params[name]
            return p.value() if hasattr(p, "value") else p

        if self.folded:
            self.net.refresh({name: value(name) for name in self._names})
            return
        for name, p in self._params.items():
            p.set_data(value(name))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import mindspore as ms

        # from_numpy shares the batch's memory where Tensor() copies it: 0.7 ms of a 12 ms batch of
        # 32 at 0.35 @ 96 on CPU. The call is synchronous (asnumpy), so the array outlives its use.
        batch = ms.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if not self.folded:
            return self.net(batch).asnumpy()
        from ..ops.depthwise import inference_spin

        with inference_spin():  # the C++ kernels back to back: keep their threads awake between them
            return self.net(batch).asnumpy()


def inference_net(net: nn.Cell, depthwise_kernel: str = "auto") -> EvalNet:
    """``net`` (eval mode, weights loaded) as validation runs it on this process's device."""
    import mindspore as ms

    from ..ops import apply_depthwise_kernel

    apply_depthwise_kernel(net, depthwise_kernel, ms.get_context("device_target") or "CPU")
    return EvalNet(net)


def evaluate(forward: Callable[[np.ndarray], np.ndarray], loader: Loader, dist: DistInfo = DistInfo(),
             desc: str = "val", show_progress: bool = True) -> Dict[str, float]:
    """Evaluate ``forward`` (an EvalNet, or any images -> logits) over a loader from data.create_loader."""
    batches = loader.dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
    return run_eval(forward, batches, loader.num_images, loader.batch_size, dist, desc, show_progress)


def describe(metrics: Dict[str, float], prefix: Optional[str] = None) -> str:
    """One human line: top-1, top-5, loss, images, speed."""
    head = f"{prefix}: " if prefix else ""
    return (f"{head}top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
            f"images {metrics['num_images']}  ({metrics['images_per_sec']:.1f} img/s)")
