"""The probe ops.cpu_isa times under each instruction-set cap (a child process per cap).

Run by path with ONEDNN_MAX_CPU_ISA set; imports only numpy and MindSpore.
"""
import json
import sys
import time


def main(iters: int = 12) -> int:
    """Time MobileNetV2's oneDNN-heavy pattern; print {"ms": median} as one JSON line."""
    import numpy as np
    import mindspore as ms
    from mindspore import nn, ops

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O0"})

    # The stem (3x3, stride 2, 3 input channels) is in the probe because oneDNN's AVX-512 code ran it
    # 10-20x slower than its AVX2 code on a Zen 5 EPYC (family 26) whose 1x1 convolutions were as fast
    # or faster with AVX-512: without it the probe chose no cap and training ran at 0.4-0.6x the speed.
    class Block(nn.Cell):  # the stem, then expand 1x1 + BN + ReLU6, project 1x1 + BN: width 1.0 at 28x28
        def __init__(self):
            super().__init__()
            self.body = nn.SequentialCell([nn.Conv2d(3, 32, 3, stride=2, pad_mode="pad", padding=1, has_bias=False),
                                           nn.BatchNorm2d(32), nn.ReLU6(),
                                           nn.Conv2d(32, 192, 1, has_bias=False), nn.BatchNorm2d(192), nn.ReLU6(),
                                           nn.Conv2d(192, 32, 1, has_bias=False), nn.BatchNorm2d(32)])

        def construct(self, x):
            return self.body(x).mean()

    class Step(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net, self.weights = net, ms.ParameterTuple(net.trainable_params())

        def construct(self, x):
            return ops.value_and_grad(self.net, None, self.weights)(x)

    net = Block()
    net.set_train(True)
    step = Step(net)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((16, 3, 56, 56)).astype(np.float32))
    for _ in range(3):
        step(x)[0].asnumpy()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step(x)[0].asnumpy()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"ms": 1e3 * sorted(times)[len(times) // 2]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
