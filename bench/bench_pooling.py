"""Global average pooling, forward + backward, on CPU: MindSpore's ReduceMean against ops.pooling's matrix product.

    .venv/bin/python bench/bench_pooling.py           # the three training shapes below
    .venv/bin/python bench/bench_pooling.py --quick   # smoke size

Each contender is the pooling cell followed by a 10-class Dense and a sum, differentiated with
respect to its input and compiled in graph mode (what a training step runs around the pooling).
Contenders alternate in blocks (time_blocks); medians per call. Also reports the largest
difference of the pooled values, to show they agree to float rounding. Result: bench/results/pooling.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common  # noqa: E402

# (batch, channels, H, W) before pooling: the CPU demo (0.35 @ 32, output stride 16, batch 64),
# 0.35 @ 96 and 1.0 @ 224 at batch 32 (1280 channels: width <= 1.0)
SHAPES = ((64, 1280, 2, 2), (32, 1280, 3, 3), (32, 1280, 7, 7))


def main(argv=None) -> int:
    """Time both poolings at each shape and write the result."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke size: one small shape, few calls")
    ap.add_argument("--blocks", type=int, default=10, help="interleaved blocks per contender")
    args = ap.parse_args(argv)

    import numpy as np

    import mindcv_mnv2  # noqa: F401  (first: it sets OMP_WAIT_POLICY before MindSpore loads)
    import mindspore as ms
    from mindspore import nn

    from mindcv_mnv2.models.mobilenetv2 import GlobalAvgPool
    from mindcv_mnv2.ops.pooling import matmul_avg_pool

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU", jit_config={"jit_level": "O0"})

    class Probe(nn.Cell):
        def __init__(self, pool, channels):
            super().__init__()
            self.pool, self.dense = pool, nn.Dense(channels, 10)

        def construct(self, x):
            return self.dense(self.pool(x)).sum()

    shapes = ((4, 64, 2, 2),) if args.quick else SHAPES
    blocks, per_block = (1, 2) if args.quick else (args.blocks, 5)
    rows, cases = [], []
    for shape in shapes:
        x = ms.Tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        pools = {"ReduceMean": GlobalAvgPool(), "MatMul": matmul_avg_pool()}
        grads = {k: ms.jit(ms.value_and_grad(Probe(p, shape[1]), grad_position=0)) for k, p in pools.items()}
        times = _common.time_blocks({k: (lambda g=g: g(x)[1].asnumpy()) for k, g in grads.items()}, blocks, per_block)
        ms_ = {k: 1e3 * _common.median(v) for k, v in times.items()}
        diff = float(np.abs(pools["MatMul"](x).asnumpy() - pools["ReduceMean"](x).asnumpy()).max())
        cases.append({"shape": list(shape), "ms": ms_, "max_abs_diff": diff})
        rows.append(["x".join(map(str, shape)), ms_["ReduceMean"], ms_["MatMul"],
                     _common.ratio(ms_["ReduceMean"], ms_["MatMul"]), diff])
    _common.print_table(["shape", "ReduceMean ms", "MatMul ms", "speed-up", "max |diff|"], rows,
                        title="global average pooling, forward + backward")
    _common.write_result("pooling", {"cases": cases}, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
