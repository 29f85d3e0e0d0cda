"""Fashion-MNIST IDX files -> an RGB ImageFolder (out/train/<class>/*.png, out/val/<class>/*.png).

    python -m mindcv_mnv2.tools.prepare_fashion_mnist --out data/fashion_mnist [--size 32]

The IDX files come from Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist);
val/ holds the 10,000 test images. Class folders are "<label>_<name>" so the sorted folder order
is the label order. Idempotent: the parameters are stored in a marker file written last; a
re-run with the same parameters does nothing, other parameters (or an interrupted run) rebuild.
"""
from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import shutil
import struct
import sys
import time
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.folder import DataError

DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES: Tuple[str, ...] = ("0_tshirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat", "5_sandal",
                                "6_shirt", "7_sneaker", "8_bag", "9_ankle_boot")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MARKER = ".fashion_mnist.json"
BUILDING = ".fashion_mnist.building"
FORMAT_VERSION = 1
_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801


def _find(source: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(source, name)
        if os.path.isfile(path):
            return path
    raise DataError(f"Fashion-MNIST IDX files not found in {source}: install the Debian package "
                    f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --source DIR "
                    f"(missing {stem}.gz)")


def read_idx(path: str, magic: int) -> np.ndarray:
    """An IDX array (uint8) after checking its magic number and size."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc}); reinstall dataset-fashion-mnist or pass another --source") \
            from None
    ndim = magic & 0xFF
    if len(data) < 4 + 4 * ndim or struct.unpack(">I", data[:4])[0] != magic:
        found = data[:4].hex() if len(data) >= 4 else "nothing"
        raise DataError(f"{path}: not an IDX file of the expected kind (magic {found}, expected {magic:08x}); "
                        f"check --source")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: holds {body.size} bytes of data for shape {shape}; the file is truncated")
    return body.reshape(shape)


def _balanced_first(labels: np.ndarray, limit: Optional[int]) -> np.ndarray:
    """The first ``limit`` indices taking classes in turn (every class gets limit/10 when limit >= 10)."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels))
    if limit < 1:
        raise DataError(f"limit {limit} must be a positive number of images")
    per_class = [np.flatnonzero(labels == c) for c in range(len(CLASS_NAMES))]
    rank = np.empty(len(labels), dtype=np.int64)
    for idx in per_class:
        rank[idx] = np.arange(len(idx))
    order = np.lexsort((np.arange(len(labels)), rank))  # round-robin: rank first, then file order
    return np.sort(order[:limit])


def encode_png_rgb(rgb: np.ndarray, level: int = 1) -> bytes:
    """A minimal 8-bit RGB PNG (PIL's encoder costs ~10x more per 32 px image)."""
    h, w, _ = rgb.shape
    raw = np.zeros((h, w * 3 + 1), dtype=np.uint8)  # filter byte 0 (none) per row
    raw[:, 1:] = rgb.reshape(h, w * 3)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
            + chunk(b"IEND", b""))


def _write_chunk(args: Tuple[str, np.ndarray, np.ndarray, np.ndarray, int, str]) -> int:
    from PIL import Image

    split_dir, images, labels, indices, size, fmt = args
    for img, label, index in zip(images, labels, indices):
        pil = Image.fromarray(img, mode="L")
        if size != img.shape[0]:
            pil = pil.resize((size, size), Image.BILINEAR)
        path = os.path.join(split_dir, CLASS_NAMES[label], f"{index:05d}.{fmt}")
        if fmt == "png":
            gray = np.asarray(pil)
            with open(path, "wb") as fh:
                fh.write(encode_png_rgb(np.repeat(gray[:, :, None], 3, axis=2)))
        else:
            pil.convert("RGB").save(path, format="JPEG", quality=95)
    return len(indices)


def _params(source: str, size: int, fmt: str, limit_train: Optional[int], limit_val: Optional[int]) -> dict:
    return {"version": FORMAT_VERSION, "source": os.path.realpath(source), "size": int(size), "format": fmt,
            "limit_train": limit_train, "limit_val": limit_val}


def _ours(out_dir: str) -> bool:
    """Whether train/ and val/ in out_dir were (partly) written by this tool, so may be replaced."""
    if os.path.exists(os.path.join(out_dir, MARKER)) or os.path.exists(os.path.join(out_dir, BUILDING)):
        return True
    for split in FILES:
        path = os.path.join(out_dir, split)
        if os.path.exists(path) and not (os.path.isdir(path) and set(os.listdir(path)) <= set(CLASS_NAMES)):
            return False
    return True


def _remove_ours(out_dir: str) -> None:
    for name in ("train", "val", ".partial", MARKER):
        path = os.path.join(out_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def prepare_fashion_mnist(out_dir: str, source: Optional[str] = None, size: int = 32, fmt: str = "png",
                          limit_train: Optional[int] = None, limit_val: Optional[int] = None,
                          workers: Optional[int] = None) -> Dict[str, object]:
    """Write Fashion-MNIST as an RGB ImageFolder under ``out_dir`` unless it is already there."""
    source = source or DEFAULT_SOURCE
    fmt = fmt.lower().lstrip(".")
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in ("png", "jpg"):
        raise DataError(f"format '{fmt}' is not supported; use png or jpg")
    if int(size) < 8:
        raise DataError(f"size {size} is too small; use at least 8 (28 = native, 32 = default)")
    params = _params(source, size, fmt, limit_train, limit_val)
    marker = os.path.join(out_dir, MARKER)
    result: Dict[str, object] = {"out_dir": out_dir, "train_dir": os.path.join(out_dir, "train"),
                                 "val_dir": os.path.join(out_dir, "val"), "class_names": list(CLASS_NAMES)}
    if os.path.isfile(marker) and all(os.path.isdir(os.path.join(out_dir, s)) for s in FILES):
        with open(marker) as fh:
            done = json.load(fh)
        if done.get("params") == params:
            result.update(done["counts"], built=False, seconds=0.0)
            return result

    stems = {split: [_find(source, stem) for stem in pair] for split, pair in FILES.items()}
    data = {}
    for split, (img_path, lab_path) in stems.items():
        images, labels = read_idx(img_path, _IDX_IMAGES), read_idx(lab_path, _IDX_LABELS)
        if len(images) != len(labels) or images.shape[1:] != (28, 28) or labels.max() >= len(CLASS_NAMES):
            raise DataError(f"{img_path} and {lab_path} do not form a Fashion-MNIST split "
                            f"({images.shape} images, {labels.shape} labels); check --source")
        keep = _balanced_first(labels, limit_train if split == "train" else limit_val)
        data[split] = (images[keep], labels[keep], keep)

    os.makedirs(out_dir, exist_ok=True)
    building = os.path.join(out_dir, BUILDING)
    if not _ours(out_dir) and any(os.path.exists(os.path.join(out_dir, s)) for s in FILES):
        raise DataError(f"{out_dir} already has train/ or val/ not written by this tool; pass an empty or new --out")
    open(building, "w").close()  # from here on, a crash leaves a folder this tool may rebuild
    _remove_ours(out_dir)
    t0 = time.perf_counter()
    partial = os.path.join(out_dir, ".partial")
    jobs = []
    for split, (images, labels, keep) in data.items():
        for name in CLASS_NAMES:
            os.makedirs(os.path.join(partial, split, name), exist_ok=True)
        chunk = 2000
        for lo in range(0, len(keep), chunk):
            jobs.append((os.path.join(partial, split), images[lo:lo + chunk], labels[lo:lo + chunk],
                         keep[lo:lo + chunk], int(size), fmt))
    nproc = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    if nproc > 1:
        with mp.get_context("fork").Pool(nproc) as pool:
            list(pool.imap_unordered(_write_chunk, jobs))
    else:
        for job in jobs:
            _write_chunk(job)
    for split in FILES:
        os.replace(os.path.join(partial, split), os.path.join(out_dir, split))
    os.rmdir(partial)
    counts = {"num_train": int(len(data["train"][2])), "num_val": int(len(data["val"][2]))}
    tmp = marker + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"params": params, "counts": counts}, fh, indent=1)
    os.replace(tmp, marker)
    os.remove(building)
    result.update(counts, built=True, seconds=time.perf_counter() - t0)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m mindcv_mnv2.tools.prepare_fashion_mnist", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (gets train/ and val/)")
    ap.add_argument("--source", default=None, help=f"folder with the four IDX .gz files (default {DEFAULT_SOURCE})")
    ap.add_argument("--size", type=int, default=32, help="output side in pixels (default 32; 28 = native)")
    ap.add_argument("--format", default="png", choices=("png", "jpg"), help="image format (default png)")
    ap.add_argument("--limit_train", type=int, default=None, help="write only this many training images")
    ap.add_argument("--limit_val", type=int, default=None, help="write only this many validation images")
    ap.add_argument("--workers", type=int, default=None, help="writer processes (default: all cores)")
    args = ap.parse_args(argv)
    try:
        res = prepare_fashion_mnist(args.out, args.source, args.size, args.format, args.limit_train,
                                    args.limit_val, workers=args.workers)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if res["built"]:
        print(f"wrote {res['num_train']} train + {res['num_val']} val images to {args.out} in {res['seconds']:.1f} s")
    else:
        print(f"{args.out} already holds Fashion-MNIST with these parameters ({res['num_train']} train + "
              f"{res['num_val']} val images); nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
