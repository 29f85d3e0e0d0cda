"""Find the images of an ImageFolder split that the pipeline cannot decode.

    python -m mindcv_mnv2.data.verify DATA_DIR [--split train]

Prints one line per skipped or undecodable file and exits 1 when any file fails to decode.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .folder import DataError, scan_image_folder


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
    from .loader import verify_images

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
