"""Batch-1 latency of every width x resolution, next to params and MACs (TF-slim's table, this CPU).

    .venv/bin/python bench/bench_latency.py            # full grid: 6 widths x 5 resolutions (~7 min)
    .venv/bin/python bench/bench_latency.py --quick    # one network (0.35@96)

Each width runs in its own process (bench_eval's worker): for every resolution the network is
built, saved, exported to ONNX (fp32, and int8 calibrated on 16 photos), and one 1x3xRxR image is
run through ``EvalNet`` (what validate.py runs: graph mode, BatchNorm folded, the C++ kernels) and
onnxruntime fp32 / int8 (2 threads) and, when installed (``pip install openvino==2026.4.1``; not a
project dependency), OpenVINO fp32 / int8 on the same ONNX files, in interleaved blocks; the median latency in ms is reported. Params and MACs come from ``mindcv_mnv2.summary.model_summary``
(1001 classes and TF-slim's conventions: conv/dense weights and biases, MACs of conv/dense).
TF-slim's "Mobile CPU" column was measured on a Pixel 1 phone (one large core, TF-Lite); the
numbers here are this 2-core x86 VM's, so compare shapes of the curve, not absolute values.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
SIZES = (96, 128, 160, 192, 224)


def main(argv=None) -> int:
    """Measure the grid; print the table and write bench/results/latency.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one network only")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--per_block", type=int, default=5)
    args = ap.parse_args(argv)
    from _common import print_table, ratio, write_result
    from bench_eval import spawn

    from mindcv_mnv2.summary import model_summary

    grid = {0.35: (96,)} if args.quick else {w: SIZES for w in WIDTHS}
    blocks, per = (1, 2) if args.quick else (args.blocks, args.per_block)
    rows, records = [], []
    for width, sizes in grid.items():
        r = spawn([(width, s, 1) for s in sizes], blocks, per)
        load = f"{r['load_before'][0]:.2f}-{r['load_after'][0]:.2f}"
        for c in r["result"]["cases"]:
            s = model_summary(width, c["size"], 1001)
            ms_ms, ort_ms = c["mindspore_evalnet"]["median_ms"], c["onnxruntime"]["median_ms"]
            q_ms = c.get("onnxruntime_int8", {}).get("median_ms", float("nan"))
            ov_ms = c.get("openvino", {}).get("median_ms", float("nan"))
            ov_q_ms = c.get("openvino_int8", {}).get("median_ms", float("nan"))
            rec = {"width": width, "size": c["size"], "macs_m": s["macs"] / 1e6,
                   "params_m": s["params_excl_bn"] / 1e6, "mindspore_ms": ms_ms, "onnxruntime_ms": ort_ms,
                   "onnxruntime_int8_ms": q_ms, "openvino_ms": ov_ms, "openvino_int8_ms": ov_q_ms,
                   "openvino_max_abs_diff": c.get("openvino_max_abs_diff"), "ms_over_ort": ratio(ms_ms, ort_ms),
                   "int8_speedup": ratio(ort_ms, q_ms), "max_abs_diff": c["max_abs_diff"], "load": load,
                   "peak_rss_mib": r["peak_rss_mib"]}
            records.append(rec)
            rows.append((width, c["size"], round(rec["macs_m"]), round(rec["params_m"], 2), ms_ms, ort_ms, q_ms,
                         ov_ms, ov_q_ms, rec["ms_over_ort"], rec["int8_speedup"], load))
            print(f"  {width}@{c['size']}: MindSpore {ms_ms:.2f} ms, ORT {ort_ms:.2f} ms (load {load})",
                  file=sys.stderr, flush=True)
    print_table(["width", "res", "MACs (M)", "params (M)", "MindSpore ms", "ORT fp32 ms", "ORT int8 ms",
                 "OpenVINO fp32 ms", "OpenVINO int8 ms", "MS / ORT fp32", "int8 speed-up", "load (1-min)"], rows, title="batch-1 latency, median")
    path = write_result("latency", {"rows": records, "blocks": blocks, "per_block": per}, quick=args.quick)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
