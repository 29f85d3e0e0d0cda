"""Transfer learning on real images: pretrain on Fashion-MNIST classes 0-4, fine-tune onto 5-9.

    .venv/bin/python bench/bench_transfer.py            # pretrain on 30,000 images (3 epochs), 5,000 test images
    .venv/bin/python bench/bench_transfer.py --quick    # 2,500 images (2 epochs), 500 test images

From 50 images per class of classes 5-9 (250 images), three ways, each with train.py as a user runs it:

* ``frozen backbone``: ``--ckpt_path base --freeze_layer backbone`` (features computed once, the head
  trains on them);
* ``features 0-13 frozen``: ``--freeze_layer 14`` (the stem and the first 11 of 17 inverted-residual
  blocks are frozen; blocks 11-16 (the 96/160/320-channel stages) and the last 1x1 conv train; the
  frozen part runs every step without gradients);
* ``full fine-tune``: ``--ckpt_path base`` (every layer trains, lower lr);
* ``from scratch``: the same 250 images, no checkpoint.

Reported: top-1 on the held-out test images of classes 5-9 (validate.py) and the fine-tuning run's
wall time. The base model never saw classes 5-9 (its head is dropped).
Result: bench/results/transfer.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import CACHE, PROJECT_PY, ROOT, print_table, run_child, write_result  # noqa: E402

RECIPE = "configs/mobilenet_v2_0.35_fashion_mnist_cpu.yaml"
NO_AUG = ["--hflip", "0", "--scale", "1", "1", "--ratio", "1", "1", "--color_jitter", "0"]
# the loss and decay the transfer table was measured with (the demo recipe has since moved to 0.1 / 5e-4)
MEASURED_WITH = ["--label_smoothing", "0", "--weight_decay", "0.00004"]
FINETUNE = {  # name: extra train.py flags (all: 250 images, batch 25 = 10 steps per epoch)
    "frozen backbone": ["--freeze_layer", "backbone", "--lr", "0.1", "--weight_decay", "0"],
    "features 0-13 frozen": ["--freeze_layer", "14", "--lr", "0.02"],
    "full fine-tune": ["--lr", "0.02"],
    "from scratch": ["--lr", "0.1", "--ckpt_path", ""],
}


def _split(src: Path, dst: Path, classes, per_class: int = 0) -> Path:
    """An ImageFolder of some classes of ``src`` (symlinks; the first ``per_class`` train images if given)."""
    for split in ("train", "val"):
        for d in sorted((src / split).iterdir()):
            if int(d.name.split("_")[0]) not in classes:
                continue
            out = dst / split / d.name
            out.mkdir(parents=True, exist_ok=True)
            files = sorted(d.iterdir())
            if split == "train" and per_class:
                files = files[:per_class]
            for f in files:
                link = out / f.name
                if not link.exists():
                    link.symlink_to(f)
    return dst


def _train(data: Path, run: Path, extra, epochs: int) -> dict:
    args = [PROJECT_PY, "train.py", "-c", RECIPE, "--data_dir", str(data), "--ckpt_save_dir", str(run),
            "--epoch_size", str(epochs), "--decay_epochs", str(epochs), "--warmup_epochs", "0", *MEASURED_WITH,
            *extra]
    t0 = time.perf_counter()
    r = run_child(args, log=run.parent / f"{run.name}.log", env={"MNV2_NO_BARS": "1"})
    if r["exit"]:
        raise SystemExit(f"train.py failed ({' '.join(map(str, args))}): {(run.parent / f'{run.name}.log').read_text()[-1500:]}")
    return {"wall_s": time.perf_counter() - t0}


def _top1(data: Path, ckpt: Path, out: Path) -> dict:
    r = run_child([PROJECT_PY, "validate.py", "--data_dir", str(data), "--ckpt_path", str(ckpt), "--output_json",
                   str(out)], env={"MNV2_NO_BARS": "1"})
    if r["exit"]:
        raise SystemExit(f"validate.py failed on {ckpt}")
    return json.loads(out.read_text())


def main(argv=None) -> int:
    """Pretrain, fine-tune three ways, score; print the table, write bench/results/transfer.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--per_class", type=int, default=50, help="fine-tuning images per class")
    ap.add_argument("--epochs", type=int, default=30, help="fine-tuning epochs")
    args = ap.parse_args(argv)
    from mindcv_mnv2.tools.prepare_fashion_mnist import prepare_fashion_mnist

    n_train, n_val, base_epochs = (5000, 1000, 2) if args.quick else (60000, 10000, 3)
    work = CACHE / f"transfer{'_quick' if args.quick else ''}"
    shutil.rmtree(work / "runs", ignore_errors=True)
    (work / "runs").mkdir(parents=True)
    prepare_fashion_mnist(str(work / "fm"), limit_train=n_train, limit_val=n_val, workers=1)
    fm = work / "fm"
    base_data = _split(fm, work / "classes_0_4", range(0, 5))
    new_data = _split(fm, work / f"classes_5_9_{args.per_class}", range(5, 10), args.per_class)
    base_run = work / "base"  # kept between invocations: the fine-tuning rows can be re-run alone
    base_ckpt = base_run / f"mobilenet_v2_035-{base_epochs}_{len(list((base_data / 'train').rglob('*.png'))) // 128}.ckpt"
    if base_ckpt.exists():
        base = json.loads((work / "base.json").read_text())
        print(f"reusing the pretrained base {base_ckpt} (delete {base_run} to train it again)", file=sys.stderr)
    else:
        shutil.rmtree(base_run, ignore_errors=True)
        base = _train(base_data, base_run, ["--val_while_train", "False"], base_epochs)
        (work / "base.json").write_text(json.dumps(base))
    rows, results = [], {"base_train_s": base["wall_s"], "per_class": args.per_class, "epochs": args.epochs}
    for name, extra in FINETUNE.items():
        run = work / "runs" / name.replace(" ", "_")
        flags = ["--batch_size", "25", "--ckpt_path", str(base_ckpt), *NO_AUG, "--val_while_train", "False", *extra]
        t = _train(new_data, run, flags, args.epochs)
        ckpt = run / f"mobilenet_v2_035-{args.epochs}_10.ckpt"
        m = _top1(new_data, ckpt, run.parent / f"{run.name}.json")
        results[name] = {"top1": m["top1"], "top5": m["top5"], "val_images": m["num_images"], "wall_s": t["wall_s"]}
        rows.append((name, f"{m['top1']:.2f}", m["num_images"], f"{t['wall_s']:.0f}"))
    print_table(["fine-tuning (250 images of 5 new classes)", "top-1 %", "test images", "wall time s"], rows,
                title=f"Transfer: pretrained on classes 0-4 ({len(list((base_data / 'train').rglob('*.png')))} images,"
                      f" {base_epochs} epochs), fine-tuned onto 5-9")
    write_result("transfer", results, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
