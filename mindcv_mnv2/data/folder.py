"""Scan and validate an ImageFolder tree: root/<split>/<class>/<image>.

Labels are positions in the sorted class-folder list (or in ``class_names`` when the caller
passes the training split's list), so train and val can never disagree silently.

Broken files are handled here, before any MindSpore pipeline exists, because a decode failure
inside a pipeline surfaces as a C++ "Exception thrown from dataset pipeline" in the middle of an
epoch. Each file with an image extension is opened once and its first 16 and (JPEG/PNG) last 4 KB
are checked (``check_files=True``, the default; ~20 us per cached file).
Skipped, recorded in ``ImageList.skipped`` with the reason and reported in one warning:

- a zero-byte file; a file with no JPEG/PNG/BMP/TIFF signature (an HTML error page saved as
  .jpg, a macOS ``._x.jpg`` resource fork); GIF or WebP data the decoder cannot read;
- a truncated JPEG (no end-of-image marker) or PNG (no IEND chunk), the usual result of an
  interrupted download or copy; libjpeg decodes some of them with a grey bottom and fails on
  others, depending on where the cut falls.

Not detectable without decoding: damage inside a file whose header and end are intact. libjpeg
decodes most such files (a garbled region, a warning on stderr); one that still fails stops the
pipeline with MindSpore's error. :func:`mindcv_mnv2.data.verify_images` decodes every file once
(C++ Decode) and names those, for a one-off check of a new dataset.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger("mindcv_mnv2")

# Only what mindspore.dataset.vision.Decode reads (checked on MindSpore 2.10: GIF and WebP fail).
IMG_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

_SIGNATURES: Tuple[Tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
# Valid files may carry a little trailing data after the end marker; look this far back for it.
_TAIL_BYTES = 4096
_UNSUPPORTED_SIGNATURES: Tuple[Tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)


from ..errors import DataError  # noqa: E402,F401  (raised here; re-exported)


@dataclass
class ImageList:
    """The images of one split: sorted file paths, int32 labels and the class names."""

    files: List[str]
    labels: np.ndarray
    class_names: List[str]
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    root: str = ""
    split: str = ""

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_classes(self) -> int:
        """Number of classes (folders), including none that are empty (those are errors)."""
        return len(self.class_names)

    def counts(self) -> Dict[str, int]:
        """Images per class name."""
        per = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, per)}


def sniff_image(path: str) -> Optional[str]:
    """Why ``path`` cannot be an image the decoder reads (None when header and end look fine)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            head = os.read(fd, 16)
            kind = next((k for sig, k in _SIGNATURES if head.startswith(sig)), None)
            tail = b""
            if kind in ("jpeg", "png") and size > 16:
                tail = head[-2:] + os.pread(fd, _TAIL_BYTES, max(16, size - _TAIL_BYTES))
        finally:
            os.close(fd)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not head:
        return "zero-byte file"
    if kind == "jpeg" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker); re-download or delete it"
    if kind == "png" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk); re-download or delete it"
    if kind is not None:
        return None
    for sig, name in _UNSUPPORTED_SIGNATURES:
        if head.startswith(sig):
            return f"{name} data, which the decoder cannot read; convert it to JPEG or PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP data, which the decoder cannot read; convert it to JPEG or PNG"
    return "not an image (no JPEG/PNG/BMP/TIFF signature)"


def _walk_images(class_dir: str, extensions: Tuple[str, ...],
                 skipped: List[Tuple[str, str]]) -> List[str]:
    """Image paths under ``class_dir`` (recursively, sorted); other entries go to ``skipped``."""
    found: List[str] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        for d in [d for d in dirnames if d.startswith(".")]:
            skipped.append((os.path.join(dirpath, d), "hidden folder"))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.startswith("."):
                skipped.append((path, "hidden file"))
            elif not name.lower().endswith(extensions):
                skipped.append((path, f"not an image extension ({', '.join(extensions)})"))
            else:
                found.append(path)
    return found


def _check_headers(files: List[str], workers: int) -> List[Optional[str]]:
    if workers <= 1 or len(files) < 2:
        return [sniff_image(f) for f in files]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(sniff_image, files, chunksize=64))


def _class_folders(split_dir: str, skipped: List[Tuple[str, str]]) -> List[str]:
    names = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            skipped.append((entry.path, "hidden entry"))
        elif entry.is_dir():
            names.append(entry.name)
        else:
            skipped.append((entry.path, "file outside the class folders"))
    return names


def _match_classes(split_dir: str, found: List[str], class_names: Sequence[str]) -> List[str]:
    expected = list(class_names)
    if len(set(expected)) != len(expected):
        raise DataError(f"class_names given for {split_dir} contain duplicates; pass each class once")
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing class folders {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if extra:
            parts.append(f"unexpected class folders {extra[:20]}{' ...' if len(extra) > 20 else ''}")
        raise DataError(f"{split_dir}: its class folders differ from the {len(expected)} training classes: "
                        f"{'; '.join(parts)}. Labels would shift; make the split's class folders the same set "
                        f"as the training split's")
    return expected


def scan_image_folder(root: str, split: str, class_names: Optional[Sequence[str]] = None,
                      extensions: Sequence[str] = IMG_EXTENSIONS, *, check_files: bool = True,
                      workers: int = 1) -> ImageList:
    """List root/<split>/<class>/<image> files with labels; raise DataError on a malformed tree.

    ``check_files`` reads each image's first 16 and last 4096 bytes (about 20 us per cached file);
    ``workers > 1`` spreads that over threads, which pays off only on slow or network storage.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"data_dir '{root}' does not exist; pass --data_dir pointing at a folder with "
                        f"train/ and val/")
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        present = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        raise DataError(f"split folder '{split_dir}' does not exist (data_dir has {present}); create it with one "
                        f"sub-folder per class, or set the split name (train_split / val_split)")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    skipped: List[Tuple[str, str]] = []
    found = _class_folders(split_dir, skipped)
    if not found:
        raise DataError(f"split folder '{split_dir}' has no class folders; expected {split_dir}/<class>/<image>")
    names = _match_classes(split_dir, found, class_names) if class_names is not None else found

    files: List[str] = []
    labels: List[int] = []
    for label, name in enumerate(names):
        class_dir = os.path.join(split_dir, name)
        paths = _walk_images(class_dir, exts, skipped)
        if check_files:
            reasons = _check_headers(paths, workers)
            for p, why in zip(paths, reasons):
                if why is not None:
                    skipped.append((p, why))
            paths = [p for p, why in zip(paths, reasons) if why is None]
        if not paths:
            raise DataError(f"class folder '{class_dir}' has no readable images ({', '.join(exts)}); add images "
                            f"or remove the folder (from every split)")
        files.extend(paths)
        labels.extend([label] * len(paths))

    broken = [(p, why) for p, why in skipped if why not in ("hidden file", "hidden folder", "hidden entry")
              and not why.startswith("not an image extension")]
    if broken:
        shown = "; ".join(f"{p}: {why}" for p, why in broken[:5])
        log.warning("%s: skipped %d broken image file(s): %s%s", split_dir, len(broken), shown,
                    " ..." if len(broken) > 5 else "")
    return ImageList(files=files, labels=np.asarray(labels, dtype=np.int32), class_names=list(names),
                     skipped=skipped, root=root, split=split)
