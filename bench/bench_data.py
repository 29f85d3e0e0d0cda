"""Input-pipeline throughput: the project's loader (real train/val transforms) vs a plain PIL+numpy loop.

    .venv/bin/python bench/bench_data.py            # full (~3 min)
    .venv/bin/python bench/bench_data.py --quick    # smoke size

Measured in this process with ``_common.measure_throughput`` (images/s over one pass
after a warm-up batch) on:

- the real photos (100 ai-benchmark 512x512 JPEGs replicated into a 10-class ImageFolder), the
  default MindCV train transforms at 224 px (RandomCropDecodeResize, flip, colour jitter 0.4,
  normalise, CHW) and val transforms (decode, resize 256, centre crop 224, normalise, CHW),
  batch 32, ``num_parallel_workers`` 1 and 2;
- Fashion-MNIST (32x32 PNG) with random crops (scale 0.64-1), batch 128, and with the CPU demo
  recipe's flips-only transforms, batch 64, where ``data_cache auto`` serves batches from images
  decoded into memory (decoding happens when the loader is built, outside the timed pass).

Baseline: the same steps written with PIL and numpy in one Python thread (decode, random
resized crop + bilinear resize, flip, jitter via ImageEnhance for the photos, float normalise,
HWC->CHW, stack into a batch). Contenders are interleaved; medians.

The pipeline must outrun training: ``x train`` divides pipeline images/s by the training images/s
of the same recipe from bench/results/train.json (goal >= 3).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (RESULTS, fashion_folder, interleave, median, photo_folder, print_table, ratio,  # noqa: E402
                     write_result)

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def project_loader(root: str, train: bool, size: int, batch: int, workers: int, num_samples, recipe: dict,
                   data_cache: str = "off"):
    """A loader built the way the engine builds it."""
    from mindcv_mnv2.data import create_loader, create_transforms, scan_image_folder

    images = scan_image_folder(root, "train" if train else "val")
    transforms = create_transforms(train, size, **recipe)
    return create_loader(images, batch_size=batch, is_training=train, transforms=transforms,
                         num_parallel_workers=workers, num_samples=num_samples if train else None,
                         drop_remainder=train, data_cache=data_cache)


def project_contender(root, train, size, batch, workers, num_samples, recipe, max_batches, data_cache="off"):
    """Callable measuring one pass of the project's pipeline."""
    def run():
        from _common import measure_throughput

        loader = project_loader(root, train, size, batch, workers, num_samples, recipe, data_cache)
        res = measure_throughput(loader, max_batches=max_batches)
        return {"img_per_s": res["images_per_second"], "images": res["images"]}
    return run


def _random_resized_box(w: int, h: int, scale, ratio_range, rng: random.Random):
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(math.log(ratio_range[0]), math.log(ratio_range[1])))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return x, y, x + cw, y + ch
    side = min(w, h)
    return (w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2


def pil_contender(files, train: bool, size: int, batch: int, n_images: int, scale, ratio_range, jitter: float,
                  mean=MEAN, std=STD):
    """Callable: the same transforms in plain PIL + numpy, one thread."""
    import numpy as np
    from PIL import Image, ImageEnhance

    mean_a = np.asarray(mean, np.float32)
    inv_std = 1.0 / np.asarray(std, np.float32)

    def one(path, rng):
        with Image.open(path) as im:
            im = im.convert("RGB")
            if train:
                box = _random_resized_box(im.width, im.height, scale, ratio_range, rng)
                im = im.resize((size, size), Image.BILINEAR, box=box)
                if rng.random() < 0.5:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
                if jitter:
                    for enh in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                        im = enh(im).enhance(rng.uniform(1 - jitter, 1 + jitter))
            else:
                short = int(size / 0.875)
                w, h = im.size
                nw, nh = (short, int(h * short / w)) if w <= h else (int(w * short / h), short)
                im = im.resize((nw, nh), Image.BILINEAR)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
            a = np.asarray(im, np.float32)
        return ((a - mean_a) * inv_std).transpose(2, 0, 1)

    def run():
        rng = random.Random(0)
        order = [files[i % len(files)] for i in range(n_images + batch)]
        batches = [order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)]
        np.stack([one(p, rng) for p in batches[0]])  # warm-up batch, as measure_throughput does
        t0 = time.perf_counter()
        seen = 0
        for b in batches[1:]:
            np.stack([one(p, rng) for p in b])
            seen += len(b)
        return {"img_per_s": seen / (time.perf_counter() - t0), "images": seen}
    return run


def training_speeds() -> dict:
    """Steady training img/s per case from bench/results/train.json (project and MindCV), if present."""
    path = RESULTS / "train.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {c["case"]: {k: v["img_per_s"] for k, v in c["summary"].items()} for c in data["cases"]}


def main(argv=None) -> int:
    """Run the interleaved measurements; print tables, write bench/results/data.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke size, one repetition")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    import mindspore.dataset as ds

    ds.config.set_seed(0)
    reps = 1 if args.quick else args.reps
    photos = str(photo_folder())
    from mindcv_mnv2.data import scan_image_folder

    train_files = scan_image_folder(photos, "train").files
    val_files = scan_image_folder(photos, "val").files
    photo_recipe = {}  # MindCV defaults: scale (0.08, 1), ratio (0.75, 1.333), hflip 0.5, jitter 0.4
    size = 64 if args.quick else 224
    bsz = 8 if args.quick else 32
    n_train = 32 if args.quick else len(train_files)
    max_b = 3 if args.quick else None
    groups = {
        "photos_train_224": {
            "project_1_worker": project_contender(photos, True, size, bsz, 1, None, photo_recipe, max_b),
            "project_2_workers": project_contender(photos, True, size, bsz, 2, None, photo_recipe, max_b),
            "pil_numpy_1_thread": pil_contender(train_files, True, size, bsz, n_train, (0.08, 1.0), (0.75, 1.333),
                                                0.4)},
        "photos_val_224": {
            "project_1_worker": project_contender(photos, False, size, bsz, 1, None, photo_recipe, max_b),
            "project_2_workers": project_contender(photos, False, size, bsz, 2, None, photo_recipe, max_b),
            "pil_numpy_1_thread": pil_contender(val_files, False, size, bsz, min(n_train, len(val_files)),
                                                None, None, 0.0)},
    }
    fm = fashion_folder()
    if fm is not None:
        fm_recipe = {"scale": (0.64, 1.0), "ratio": (0.9, 1.111), "hflip": 0.5, "color_jitter": 0.0,
                     "crop_pct": 1.0, "mean": (72.94,) * 3, "std": (90.02,) * 3}
        fm_files = scan_image_folder(str(fm), "train").files
        fb = 16 if args.quick else 128
        n_fm = fb * (3 if args.quick else 40)
        groups["fashion_mnist_train_32"] = {
            "project_1_worker": project_contender(str(fm), True, 32, fb, 1, n_fm, fm_recipe, None),
            "project_2_workers": project_contender(str(fm), True, 32, fb, 2, n_fm, fm_recipe, None),
            "pil_numpy_1_thread": pil_contender(fm_files[::7], True, 32, fb, n_fm, (0.64, 1.0), (0.9, 1.111), 0.0,
                                                (72.94,) * 3, (90.02,) * 3)}
        demo = {**fm_recipe, "scale": (1.0, 1.0), "ratio": (1.0, 1.0)}  # the CPU demo recipe: flips only
        db = 16 if args.quick else 64
        n_demo = db * (3 if args.quick else 80)
        groups["fashion_mnist_demo_train_32"] = {
            "project_2_workers": project_contender(str(fm), True, 32, db, 2, n_demo, demo, None),
            "project_data_cache": project_contender(str(fm), True, 32, db, 2, n_demo, demo, None, "auto"),
            "pil_numpy_1_thread": pil_contender(fm_files[::7], True, 32, db, n_demo, (1.0, 1.0), (1.0, 1.0), 0.0,
                                                (72.94,) * 3, (90.02,) * 3)}
    else:
        print("data/fashion_mnist missing: Fashion-MNIST case skipped", file=sys.stderr)

    train_speed = training_speeds()
    link = {"photos_train_224": "photos_1.0@224_bs32", "fashion_mnist_train_32": "fashion_mnist_0.35@32_bs128"}
    out = []
    for name, contenders in groups.items():
        print(f"== {name}", file=sys.stderr)
        runs = interleave(contenders, reps)
        summary = {k: {"img_per_s": median(r["img_per_s"] for r in rs), "load": [r["load_before"][0] for r in rs]}
                   for k, rs in runs.items()}
        base = summary["pil_numpy_1_thread"]["img_per_s"]
        trained = train_speed.get(link.get(name, ""), {}).get("project_train.py", float("nan"))
        rows = [(k, s["img_per_s"], ratio(s["img_per_s"], base), ratio(s["img_per_s"], trained),
                 " ".join(f"{x:.2f}" for x in s["load"])) for k, s in summary.items()]
        print_table(["contender", "img/s (median)", "x PIL", "x train", "load (1-min)"], rows,
                    title=f"{name} (training: {trained:.3g} img/s from train.json)")
        out.append({"case": name, "reps": reps, "train_img_per_s": trained, "summary": summary, "runs": runs})
    path = write_result("data", {"cases": out}, quick=args.quick)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
