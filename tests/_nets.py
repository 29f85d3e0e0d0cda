"""Networks whose outputs depend on their input, for comparing two ways of computing them.

A freshly initialised MobileNetV2 (MindCV's fan-out init) maps every image to nearly the same
logits (1e-7 apart), so "the same outputs" would say nothing; trained networks do not behave so.
"""
from __future__ import annotations

import numpy as np


def make_input_sensitive(net, images: np.ndarray, seed: int = 0, passes: int = 20):
    """He fan-in kernels, random BN gamma/beta, BN statistics from train-mode passes over ``images``
    (PyNative: nothing to compile), a unit-scale head; returns ``net`` in eval mode."""
    import mindspore as ms

    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        if p.name.endswith(".weight") and len(p.shape) == 4:
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            p.set_data(ms.Tensor(rng.normal(0, np.sqrt(2.0 / fan_in), p.shape).astype(np.float32)))
        elif p.name.endswith("beta"):
            p.set_data(ms.Tensor(rng.normal(0, 0.3, p.shape).astype(np.float32)))
        elif p.name.endswith("gamma"):
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
        elif p.name == "classifier.1.weight":
            p.set_data(ms.Tensor(rng.normal(0, 0.1, p.shape).astype(np.float32)))
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net.set_train(True)
    x = ms.Tensor(np.ascontiguousarray(images, np.float32))
    for _ in range(passes):  # momentum 0.9: 20 passes leave 12% of the init statistics
        net(x)
    net.set_train(False)
    ms.set_context(mode=mode)
    return net
