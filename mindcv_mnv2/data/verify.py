"""Find the images of an ImageFolder split that the pipeline cannot decode.

    python -m mindcv_mnv2.data.verify DATA_DIR [--split train]

Prints one line per skipped or undecodable file and exits 1 when any file fails to decode.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .folder import DataError, ImageList, scan_image_folder, sniff_image


def _decode_failures(files: Sequence[str]) -> List[Optional[str]]:
    """Decode each file in turn; None if it decodes to H x W x 3, else the reason."""
    import mindspore.dataset.vision as vision

    decode = vision.Decode()
    reasons: List[Optional[str]] = []
    for path in files:
        why = sniff_image(path)  # also keeps MindSpore from dumping GIF/WebP copies into the cwd
        if why is None:
            data = np.fromfile(path, dtype=np.uint8)
            # MindSpore 2.10's eager JPEG decode also fails the call right after a failed one
            # (stale libjpeg error state), so a failure counts only if a retry fails too.
            for _ in range(2):
                try:
                    out = decode(data)
                except RuntimeError as exc:
                    why = "decode failed: " + (str(exc).strip().splitlines() or ["?"])[-1][:160]
                    continue
                why = None if out.ndim == 3 and out.shape[2] == 3 else f"decoded to shape {out.shape}"
                break
        reasons.append(why)
    return reasons


def verify_images(images: Union[ImageList, Sequence[str]]) -> List[Tuple[str, str]]:
    """Decode every file once (C++ Decode, as the pipeline does); (path, reason) of the failures.

    Sequential on purpose: MindSpore 2.10's eager decode is not thread-safe after a failure.
    About 150-300 full-size photos per second; meant as a one-off check of a new dataset.
    A failed eager decode makes MindSpore write ./abnormal_image.jpg, so the decoding runs in a
    scratch working directory: do not call this while other threads rely on the cwd.
    """
    import tempfile

    files = images.files if isinstance(images, ImageList) else [os.fspath(f) for f in images]
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="mnv2_verify_") as scratch:
        os.chdir(scratch)
        try:
            reasons = _decode_failures([os.path.join(here, f) for f in files])
        finally:
            os.chdir(here)
    return [(p, r) for p, r in zip(files, reasons) if r is not None]




def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m mindcv_mnv2.data.verify", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data_dir", help="folder holding the split folders")
    ap.add_argument("--split", default="train", help="split folder to check (default train)")
    args = ap.parse_args(argv)
    try:
        images = scan_image_folder(args.data_dir, args.split)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, why in images.skipped:
        print(f"skipped\t{path}\t{why}")
    bad = verify_images(images)
    for path, why in bad:
        print(f"broken\t{path}\t{why}")
    print(f"{len(images)} images checked, {len(bad)} cannot be decoded, {len(images.skipped)} skipped at scan",
          file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
