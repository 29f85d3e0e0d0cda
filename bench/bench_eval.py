"""Inference throughput: the project's EvalNet (graph mode) vs onnxruntime on the exported ONNX.

    .venv/bin/python bench/bench_eval.py            # full: 1.0@224 and 0.35@96, batch 32
    .venv/bin/python bench/bench_eval.py --quick    # smoke size (0.35@32, batch 4)

For each case, in one child process: build the network (random init), save it with
``mindcv_mnv2.checkpoint.save_checkpoint``, export it with ``mindcv_mnv2.export.export_model``
(ONNX, dynamic batch), then time the forward pass of the SAME weights both ways on one fixed
batch: ``EvalNet`` (what validate.py and the trainer's validation call, graph mode, jit O0; on CPU,
where ``depthwise_kernel: auto`` picks the C++ kernels, BatchNorm folded and the network run on the
C++ inference kernels of mindcv_mnv2.ops.folded) and an onnxruntime ``InferenceSession`` (CPU
provider, default graph optimisations, 2 intra-op threads, spinning off so its idle threads do not
steal the cores from the other contender).
Timed in interleaved blocks (MindSpore k runs, ORT k runs, repeated); medians per batch. The
logits of both are compared (max abs difference) as a correctness check.

bench/bench_latency.py reuses the worker at batch 1 for the width x resolution grid.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTH_NAMES = {0.35: "mobilenet_v2_035", 0.5: "mobilenet_v2_050", 0.75: "mobilenet_v2_075",
               1.0: "mobilenet_v2_100", 1.3: "mobilenet_v2_130", 1.4: "mobilenet_v2_140"}


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _openvino_runners(onnx_path: str, int8_path, x, out: dict, ms_logits) -> dict:
    """OpenVINO (optional: ``pip install openvino==2026.4.1``) on the same ONNX files, 2 threads, latency hint."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    import numpy as np

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": min(2, os.cpu_count() or 1), "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32"}  # no bf16/f16 downcast on CPUs that have it: fp32 vs fp32
    runners = {}
    for key, path in (("openvino", onnx_path), ("openvino_int8", int8_path)):
        if path is None:
            continue
        compiled = core.compile_model(core.read_model(path), "CPU", config)
        request = compiled.create_infer_request()
        if key == "openvino":
            out["openvino_max_abs_diff"] = float(np.abs(request.infer({0: x})[0] - ms_logits).max())
        runners[key] = (lambda r: lambda: r.infer({0: x}))(request)
    out["openvino_version"] = ov.__version__
    return runners


def measure_case(width: float, size: int, batch: int, blocks: int, per_block: int, scratch: str,
                 num_classes: int = 1000, with_ort: bool = True) -> dict:
    """Export one network and time MindSpore EvalNet vs onnxruntime on the same batch (this process)."""
    import numpy as np

    from mindcv_mnv2.checkpoint import model_meta, save_checkpoint
    from mindcv_mnv2.engine.evaluator import EvalNet
    from mindcv_mnv2.export import export_model
    from mindcv_mnv2.models import create_model

    import mindspore as ms

    name = WIDTH_NAMES[width]
    kwargs = {"num_classes": num_classes}
    net = create_model(name, **kwargs)
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    # Weights with O(1) outputs, so the two runtimes' logits are compared at a meaningful scale: BN
    # statistics from this batch (train-mode passes) and a classifier of unit-scale logits (at init the
    # logits are ~1e-9 and any absolute tolerance passes).
    net.set_train(True)
    for _ in range(10):
        net(ms.Tensor(x))
    head = net.classifier[1].weight
    head.set_data(ms.Tensor(np.random.default_rng(1).normal(0, 0.05, head.shape).astype(np.float32)))
    ckpt = os.path.join(scratch, f"{name}_{size}.ckpt")
    eval_facts = {"image_size": size, "crop_pct": 0.875, "interpolation": "bilinear",
                  "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
    save_checkpoint(ckpt, {p.name: p for p in net.get_parameters()},
                    model_meta(name, {"width_mult": width, **kwargs}, None, eval_facts))
    out = {"width": width, "size": size, "batch": batch}
    from mindcv_mnv2.ops import apply_depthwise_kernel

    # as validate.py builds it on CPU (depthwise_kernel auto: the C++ kernel); the export above is native
    out["depthwise_kernel"] = apply_depthwise_kernel(net, "auto", "CPU")
    t0 = time.perf_counter()
    eval_net = EvalNet(net)
    ms_logits = eval_net(x)
    out["ms_first_s"] = time.perf_counter() - t0  # includes graph compilation
    runners = {"mindspore_evalnet": lambda: eval_net(x)}
    if with_ort:
        import onnxruntime as ort

        t0 = time.perf_counter()
        onnx_path = export_model(ckpt, "ONNX", image_size=size, batch_size=batch,
                                 output=os.path.join(scratch, f"{name}_{size}.onnx"))
        out["export_s"] = time.perf_counter() - t0
        so = ort.SessionOptions()
        so.intra_op_num_threads = min(2, os.cpu_count() or 1)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        ort_logits = sess.run(None, {"image": x})[0]
        out["max_abs_diff"] = float(np.abs(ort_logits - ms_logits).max())
        out["logit_scale"] = float(np.abs(ms_logits).max())
        runners["onnxruntime"] = lambda: sess.run(None, {"image": x})
        from _common import photo_source

        photos = photo_source()
        if photos is not None:  # int8: calibrated on real photos (the timing does not depend on which)
            q_path = export_model(ckpt, "ONNX", image_size=size, batch_size=batch, int8=True,
                                  calibration_dir=str(photos), calibration_images=16,
                                  output=os.path.join(scratch, f"{name}_{size}_int8.onnx"))
            q_sess = ort.InferenceSession(q_path, so, providers=["CPUExecutionProvider"])
            runners["onnxruntime_int8"] = lambda: q_sess.run(None, {"image": x})
        runners.update(_openvino_runners(onnx_path, q_path if photos is not None else None, x, out, ms_logits))
    from _common import time_blocks

    times = time_blocks(runners, blocks, per_block)
    for k, ts in times.items():
        med = _median(ts)
        out[k] = {"median_ms": 1e3 * med, "img_per_s": batch / med, "n": len(ts)}
    return out


def worker_main(args: argparse.Namespace) -> int:
    """Child-process entry: measure every case in args.cases, print one JSON line."""
    from mindcv_mnv2.engine.context import setup_context

    setup_context(0, "CPU", seed=0)
    results = []
    with tempfile.TemporaryDirectory(prefix="mnv2_eval_") as scratch:
        for spec in args.cases.split(","):
            w, s, b = spec.split(":")
            results.append(measure_case(float(w), int(s), int(b), args.blocks, args.per_block, scratch,
                                        with_ort=not args.no_ort))
            print(f"  {spec}: " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in results[-1].items()
                                            if isinstance(v, dict)), file=sys.stderr, flush=True)
    print(json.dumps({"cases": results}), flush=True)
    return 0


def spawn(cases, blocks: int, per_block: int, no_ort: bool = False) -> dict:
    """Run worker_main in a fresh process (project venv); its parsed result and process facts."""
    from _common import PROJECT_PY, run_child

    cmd = [PROJECT_PY, str(Path(__file__).resolve()), "--worker", "--cases",
           ",".join(f"{w}:{s}:{b}" for w, s, b in cases), "--blocks", str(blocks), "--per_block", str(per_block)]
    if no_ort:
        cmd.append("--no_ort")
    r = run_child(cmd)
    if r["exit"]:
        raise RuntimeError(f"worker failed ({r['exit']}): {r['cmd']}\n{r['stdout_tail']}")
    return r


def main(argv=None) -> int:
    """Run the comparison; print the table and write bench/results/eval.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke size")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cases", default="")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--per_block", type=int, default=3)
    ap.add_argument("--no_ort", action="store_true")
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args)
    from _common import print_table, ratio, write_result

    cases = [(0.35, 32, 4)] if args.quick else [(1.0, 224, 32), (0.35, 96, 32)]
    blocks, per = (1, 2) if args.quick else (args.blocks, args.per_block)
    r = spawn(cases, blocks, per)
    res = r["result"]["cases"]
    def ips(c, key):  # a runtime that is not installed (OpenVINO) or had no photos (int8) shows nan
        return c.get(key, {}).get("img_per_s", float("nan"))

    rows = [(f"{c['width']}@{c['size']} bs{c['batch']}", ips(c, "mindspore_evalnet"), ips(c, "onnxruntime"),
             ratio(ips(c, "mindspore_evalnet"), ips(c, "onnxruntime")), ips(c, "onnxruntime_int8"),
             ips(c, "openvino"), ips(c, "openvino_int8"), c["ms_first_s"], c["max_abs_diff"],
             f"{r['load_before'][0]:.2f}-{r['load_after'][0]:.2f}") for c in res]
    print_table(["case", "MindSpore EvalNet img/s", "ORT fp32 img/s", "MS / ORT fp32", "ORT int8 img/s",
                 "OpenVINO fp32 img/s", "OpenVINO int8 img/s", "MS first call s", "max |logit diff|",
                 "load (1-min)"], rows, title="inference throughput (median per batch)")
    path = write_result("eval", {"cases": res, "blocks": blocks, "per_block": per, "peak_rss_mib": r["peak_rss_mib"],
                                 "load_before": r["load_before"], "load_after": r["load_after"]}, quick=args.quick)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
