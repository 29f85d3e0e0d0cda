"""The README's main job on CPU: prepare Fashion-MNIST, train MobileNetV2 0.35, validate the best checkpoint.

It ends with the run's training curves in <run_dir>/curves.png and the TensorBoard command.

    python -m mindcv_mnv2.tools.demo [--epochs N] [--data_dir DIR] [--source IDX_DIR] [--run_dir DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "configs", "mobilenet_v2_0.35_fashion_mnist_cpu.yaml")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo end to end; returns the process exit status."""
    p = argparse.ArgumentParser(prog="python -m mindcv_mnv2.tools.demo", description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=os.path.join(ROOT, "data", "fashion_mnist"))
    p.add_argument("--source", default=None, help="folder with the four Fashion-MNIST IDX .gz files")
    p.add_argument("--run_dir", default=None, help="default: runs/fashion_mnist_demo-<time>")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epoch_size")
    p.add_argument("--limit_train", type=int, default=None, help="use only N training images (smoke runs)")
    p.add_argument("--limit_val", type=int, default=None)
    args = p.parse_args(argv)

    from ..cli import train_main, validate_main
    from .prepare_fashion_mnist import prepare_fashion_mnist

    t0 = time.time()
    print(f"[1/3] preparing Fashion-MNIST as an ImageFolder in {args.data_dir}", flush=True)
    try:
        prepare_fashion_mnist(args.data_dir, source=args.source, size=32, limit_train=args.limit_train,
                              limit_val=args.limit_val)
    except (OSError, ValueError) as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    run_dir = args.run_dir or os.path.join(ROOT, "runs", time.strftime("fashion_mnist_demo-%Y%m%d-%H%M%S"))
    common = ["-c", RECIPE, "--data_dir", args.data_dir]
    train_argv = common + ["--ckpt_save_dir", run_dir]
    if args.epochs:
        train_argv += ["--epoch_size", str(args.epochs), "--decay_epochs", str(max(args.epochs - 0.1, 0.1))]
    print(f"[2/3] training (run directory {run_dir})", flush=True)
    status = train_main(train_argv, "train.py")
    if status:
        return status
    best = os.path.join(run_dir, "mobilenet_v2_035_best.ckpt")
    print(f"[3/3] validating {best} on the 10,000 test images", flush=True)
    out_json = os.path.join(run_dir, "validate.json")
    status = validate_main(common + ["--ckpt_path", best, "--output_json", out_json], "validate.py")
    if status:
        return status
    import json

    with open(out_json, encoding="utf-8") as fh:
        m = json.load(fh)
    print(f"demo done in {time.time() - t0:.0f} s: top-1 {m['top1']:.2f}%, top-5 {m['top5']:.2f}% on "
          f"{m['num_images']} Fashion-MNIST test images ({best})")
    return _show_curves(run_dir)


def _show_curves(run_dir: str) -> int:
    """Plot the run's curves into <run_dir>/curves.png and say how to watch them in TensorBoard."""
    from ..plot import PlotError, plot_runs

    try:
        png = plot_runs([run_dir], os.path.join(run_dir, "curves.png"))
    except PlotError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"training curves: {png}")
    print(f"in TensorBoard: tensorboard --logdir {os.path.join(run_dir, 'tensorboard')}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
