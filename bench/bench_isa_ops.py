"""MindSpore's own CPU kernels (oneDNN) under each instruction-set cap, layer by layer: what ``cpu_isa`` chooses from.

    .venv/bin/python bench/bench_isa_ops.py            # MobileNetV2's oneDNN layers, every cap this CPU has
    .venv/bin/python bench/bench_isa_ops.py --quick    # one small layer, no cap and SSE41

Each cap runs in its own child process (oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, when it creates its
first kernel), contenders interleaved (DEFAULT AVX2 DEFAULT AVX2 ...). Per layer: forward + backward
(loss = mean(y^2); gradients of the weight, and of the input except for the stem, as in training),
graph mode O0, median per call. Then ``ops/isa_probe.py``, the probe ``cpu_isa: auto`` times, under
each cap. These are the layers the training step leaves to oneDNN when the C++ depthwise and
BatchNorm kernels run: the 3x3 stride-2 stem and the 1x1 convolutions.
Result: bench/results/isa_ops.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (name, batch, in channels, out channels, input size, kernel, stride): 0.35 @ 96 and 1.0 @ 224, batch 32
LAYERS = [("0.35@96 stem 3->16", 32, 3, 16, 96, 3, 2), ("0.35@96 expand 8->48", 32, 8, 48, 48, 1, 1),
          ("0.35@96 project 96->24", 32, 96, 24, 12, 1, 1), ("0.35@96 expand 112->384", 32, 112, 384, 3, 1, 1),
          ("1.0@224 stem 3->32", 32, 3, 32, 224, 3, 2), ("1.0@224 expand 24->144", 32, 24, 144, 56, 1, 1),
          ("1.0@224 project 144->24", 32, 144, 24, 56, 1, 1), ("1.0@224 expand 32->192", 32, 32, 192, 28, 1, 1)]
QUICK_LAYERS = [("0.35@32 stem 3->16", 8, 3, 16, 32, 3, 2)]


def worker(layers, iters: int) -> dict:
    """Median ms per forward + backward call of each layer (runs under the cap in the environment)."""
    import numpy as np
    import mindspore as ms
    from mindspore import nn, ops

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O0"})

    class Loss(nn.Cell):
        def __init__(self, cin, cout, k, stride):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride=stride, pad_mode="pad" if k == 3 else "valid",
                                  padding=1 if k == 3 else 0, has_bias=False)

        def construct(self, x):
            return (self.conv(x) ** 2).mean()

    class Step(nn.Cell):
        def __init__(self, net, input_grad):
            super().__init__()
            self.grad = ops.GradOperation(get_all=input_grad, get_by_list=True)
            self.net, self.weights = net, ms.ParameterTuple(net.trainable_params())

        def construct(self, x):
            return self.grad(self.net, self.weights)(x)  # returned, so no gradient is pruned from the graph

    from _common import median, time_blocks

    def call(step, x):
        grads = step(x)
        for g in (grads if isinstance(grads, tuple) else (grads,)):
            for t in (g if isinstance(g, tuple) else (g,)):
                t.asnumpy()  # waits for the kernels

    out = {}
    for name, n, cin, cout, size, k, stride in layers:
        step = Step(Loss(cin, cout, k, stride), input_grad=cin != 3)  # the stem needs no input gradient
        x = ms.Tensor(np.random.default_rng(0).standard_normal((n, cin, size, size)).astype(np.float32))
        call(step, x)  # compilation; time_blocks's own warm-up call then pays the first-touch allocation
        out[name] = 1e3 * median(time_blocks({name: lambda: call(step, x)}, 1, iters)[name])
    return out


def run_cap(cap: str, args) -> dict:
    """Child process under ``cap``: the layer timings and the probe's."""
    from _common import PROJECT_PY
    from mindcv_mnv2.ops import cpu_isa

    cmd = [str(PROJECT_PY), str(Path(__file__).resolve()), "--worker", "--iters", str(args.iters)]
    if args.quick:
        cmd.append("--quick")
    # not _common.run_child: it merges into os.environ, which would put back a cap the user had set
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cpu_isa.environ_for(cap), timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the {cap} worker failed:\n{proc.stderr[-2000:]}")
    layers = json.loads(lines[-1])
    probe = cpu_isa.probe(cap)
    return {"layers": layers, "probe_ms": probe}


def main(argv=None) -> int:
    """Parse arguments; run a worker or the interleaved comparison over the caps."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke size: one small layer, caps DEFAULT and SSE41")
    ap.add_argument("--reps", type=int, default=2, help="interleaved repetitions per cap")
    ap.add_argument("--iters", type=int, default=5, help="timed calls per layer in each repetition")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    layers = QUICK_LAYERS if args.quick else LAYERS
    if args.worker:
        print(json.dumps(worker(layers, args.iters)), flush=True)
        return 0

    from _common import interleave, median, print_table, write_result
    from mindcv_mnv2.ops import cpu_isa

    flags = cpu_isa.cpu_flags()
    caps = [cpu_isa.DEFAULT, "SSE41"] if args.quick else cpu_isa.candidates(flags) + ["SSE41"]
    reps = 1 if args.quick else args.reps
    runs = interleave({cap: (lambda cap=cap: run_cap(cap, args)) for cap in caps}, reps)
    summary = {cap: {"layers": {name: median(r["layers"][name] for r in rs) for name, *_ in layers},
                     "probe_ms": median(r["probe_ms"] for r in rs)} for cap, rs in runs.items()}
    base = caps[0]
    rows = [(name, *(summary[c]["layers"][name] for c in caps),
             *(summary[c]["layers"][name] / summary[base]["layers"][name] for c in caps[1:])) for name, *_ in layers]
    rows.append(("isa_probe.py (what cpu_isa: auto times)", *(summary[c]["probe_ms"] for c in caps),
                 *(summary[c]["probe_ms"] / summary[base]["probe_ms"] for c in caps[1:])))
    avx512 = "avx512f" in flags
    print_table(["layer, forward + backward", *(f"{c} ms" for c in caps), *(f"{c} / {base}" for c in caps[1:])], rows,
                title=f"oneDNN under each cap ({'AVX-512' if avx512 else 'no AVX-512'} CPU, median of {reps})")
    path = write_result("isa_ops", {"caps": caps, "avx512f": avx512, "summary": summary, "runs": runs,
                                    "layers": [list(x) for x in layers]}, quick=args.quick)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
