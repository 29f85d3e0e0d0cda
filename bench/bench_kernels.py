"""The C++ inference kernels alone, operator by operator, as EvalNet runs them (no MindSpore: ctypes).

    .venv/bin/python bench/bench_kernels.py                     # 0.35@96 and 1.0@224, batch 32
    .venv/bin/python bench/bench_kernels.py --quick             # 0.35@32, batch 4
    .venv/bin/python bench/bench_kernels.py --lib /path/lib.so  # another build of ops/*.cc (e.g. other -D flags)

Calls the folded network's operators of mindcv_mnv2/ops/pointwise.cc (the stem, the 17 inverted-residual
blocks, the last 1x1 convolution, the pool with the classifier) in order, through their MindSpore AOT
entry points, on random weights (the kernels have no data-dependent paths). Per operator: median and
minimum over --reps passes of the whole network; the difference between the total here and
bench_eval.py's EvalNet time is what MindSpore's call adds. Result: bench/results/kernels.json.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mindcv_mnv2  # noqa: E402,F401  (sets OMP_WAIT_POLICY before libgomp loads, as in the toolkit)


def _entry(lib: ctypes.CDLL, name: str, arrays: Sequence) -> Callable[[], None]:
    """A call of one AOT entry point on fixed float32 arrays (inputs, then the output)."""
    n = len(arrays)
    params = (ctypes.c_void_p * n)(*[a.ctypes.data for a in arrays])
    ndims = (ctypes.c_int * n)(*[a.ndim for a in arrays])
    dims = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
    shapes = (ctypes.POINTER(ctypes.c_int64) * n)(*[ctypes.cast(d, ctypes.POINTER(ctypes.c_int64)) for d in dims])
    dtypes = (ctypes.c_char_p * n)(*[b"float32"] * n)
    fn = getattr(lib, name)

    def run() -> None:
        rc = fn(n, params, ndims, shapes, dtypes, None, None)
        if rc != 0:
            raise RuntimeError(f"{name} returned {rc}")
    run.keep = (arrays, dims)  # what the pointers refer to lives as long as the call
    return run


def network_ops(lib: ctypes.CDLL, width: float, size: int, batch: int) -> List[Tuple[str, Callable[[], None]]]:
    """(label, call) per operator of the folded MobileNetV2 of this width, chained through their outputs."""
    import numpy as np

    from mindcv_mnv2.models.mobilenetv2 import block_plan, param_shapes

    rng = np.random.default_rng(0)

    def weight(*shape):
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return (rng.standard_normal(shape) / np.sqrt(fan)).astype(np.float32)

    ops = []
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    shapes = param_shapes(width, 1000)
    stem = shapes["features.0.weight"][0]
    cur = np.empty((batch, stem, (size + 1) // 2, (size + 1) // 2), np.float32)
    ops.append(("stem 3x3 s2", _entry(lib, "Conv3x3BiasRelu6S2", [x, weight(stem, 3, 3, 3), weight(stem), cur])))
    for i, b in enumerate(block_plan(width)):
        hidden, hw = b.in_ch * b.expand, cur.shape[2]
        out = np.empty((batch, b.out_ch, (hw - 1) // b.stride + 1, (hw - 1) // b.stride + 1), np.float32)
        dw = [weight(hidden, 1, 3, 3), weight(hidden)]
        project = [weight(b.out_ch, hidden, 1, 1), weight(b.out_ch)]
        if b.expand == 1:
            name, arrays = "IrBlockNoExpandS1", [cur, *dw, *project, out]
        else:
            res = b.stride == 1 and b.in_ch == b.out_ch
            name = f"IrBlockS{b.stride}{'Res' if res else ''}"
            arrays = [cur, weight(hidden, b.in_ch, 1, 1), weight(hidden), *dw, *project, out]
        ops.append((f"block {i + 1} {b.in_ch}->{hidden}->{b.out_ch} @{hw} s{b.stride}", _entry(lib, name, arrays)))
        cur = out
    last_ch = shapes["features.20.weight"][0]
    last = np.empty((batch, last_ch, cur.shape[2], cur.shape[3]), np.float32)
    ops.append((f"last 1x1 {cur.shape[1]}->{last_ch}",
                _entry(lib, "PwConvBiasRelu6", [cur, weight(last_ch, cur.shape[1], 1, 1), weight(last_ch), last])))
    logits = np.empty((batch, 1000), np.float32)
    ops.append(("pool + classifier", _entry(lib, "PoolDense", [last, weight(1000, last_ch), weight(1000), logits])))
    return ops


def measure(lib: ctypes.CDLL, width: float, size: int, batch: int, reps: int) -> dict:
    """Median / minimum ms per operator and for the whole network over `reps` passes."""
    from _common import median

    ops = network_ops(lib, width, size, batch)
    for _ in range(2):  # warm-up: scratch buffers grow, the team's threads start
        for _, run in ops:
            run()
    per_op = {label: [] for label, _ in ops}
    totals = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for label, run in ops:
            t = time.perf_counter()
            run()
            per_op[label].append(time.perf_counter() - t)
        totals.append(time.perf_counter() - t0)
    return {"width": width, "size": size, "batch": batch, "reps": reps,
            "ops": [{"op": k, "median_ms": 1e3 * median(v), "min_ms": 1e3 * min(v)} for k, v in per_op.items()],
            "total_median_ms": 1e3 * median(totals), "total_min_ms": 1e3 * min(totals),
            "img_per_s": batch / median(totals)}


def main(argv=None) -> int:
    """Time each case's operators and print one table per case."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke size")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--lib", default=None, help="a shared library built from mindcv_mnv2/ops/*.cc (default: "
                                                "the toolkit's own build for this CPU)")
    args = ap.parse_args(argv)
    from _common import print_table, write_result

    if args.lib is not None and not os.path.isfile(args.lib):
        ap.error(f"--lib {args.lib}: no such file")
    from mindcv_mnv2.ops.depthwise import INFERENCE_SPIN_US, configure_team, kernel_library

    if args.lib is None:
        args.lib = kernel_library()
    lib = ctypes.CDLL(args.lib)
    if hasattr(lib, "Mnv2TeamConfigure"):  # builds before the thread team (team.h) ran on OpenMP
        configure_team(args.lib, INFERENCE_SPIN_US)  # as EvalNet runs them
    cases = [(0.35, 32, 4)] if args.quick else [(0.35, 96, 32), (1.0, 224, 32)]
    reps = 2 if args.quick else args.reps
    results = [measure(lib, w, s, b, reps) for w, s, b in cases]
    for r in results:
        rows = [(o["op"], o["median_ms"], o["min_ms"]) for o in r["ops"]]
        rows.append(("whole network", r["total_median_ms"], r["total_min_ms"]))
        print_table(["operator", "median ms", "min ms"], rows,
                    title=f"{r['width']}@{r['size']} batch {r['batch']}: {r['img_per_s']:.0f} img/s (kernels only)")
    path = write_result("kernels", {"lib": os.path.basename(args.lib), "cases": results}, quick=args.quick)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
