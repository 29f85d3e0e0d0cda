"""Calls of the C++ kernels' entry points through ctypes on fixed seeded inputs (tests/test_kernel_team.py).

Run as a script in a child process (``python -m tests._kernel_calls OUT.npz [--import-mindspore]``) it
writes the same calls' outputs, computed by that process's thread team; with ``--two-builds`` it runs
them on two builds of the library loaded into one process.
"""
from __future__ import annotations

import ctypes
import sys
from typing import Dict, List, Tuple

import numpy as np


def call(lib: ctypes.CDLL, name: str, arrays: List[np.ndarray]) -> None:
    """One AOT entry point on float32 arrays (inputs, then outputs), as MindSpore calls it."""
    n = len(arrays)
    dims = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
    rc = getattr(lib, name)(n, (ctypes.c_void_p * n)(*[a.ctypes.data for a in arrays]),
                            (ctypes.c_int * n)(*[a.ndim for a in arrays]),
                            (ctypes.POINTER(ctypes.c_int64) * n)(*[ctypes.cast(d, ctypes.POINTER(ctypes.c_int64))
                                                                   for d in dims]),
                            (ctypes.c_char_p * n)(*[b"float32"] * n), None, None)
    assert rc == 0, f"{name} returned {rc}"


def _cases() -> List[Tuple[str, List[np.ndarray], List[Tuple[int, ...]]]]:
    """(entry point, inputs, output shapes): shapes large enough to run on the whole team, with batch
    sizes that split unevenly over 2 and 3 threads, and each kernel's small-map and one-image paths."""
    rng = np.random.default_rng(7)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    one = np.ones(1, np.float32)
    return [
        ("DwForwardS2_D1", [r(5, 24, 33, 33), r(24, 1, 3, 3)], [(5, 24, 17, 17)]),
        ("DwForwardS1_D1", [r(7, 40, 6, 6), r(40, 1, 3, 3)], [(7, 40, 6, 6)]),  # narrow: 8 planes per vector
        ("DwGradInputS2_D1", [r(5, 24, 9, 9), r(24, 1, 3, 3), r(5, 24, 5, 5)], [(5, 24, 9, 9)]),
        ("DwGradWeightS1_D1", [r(5, 24, 20, 20), r(5, 24, 20, 20)], [(24, 1, 3, 3)]),
        ("DwGradWeightS2_D1", [r(5, 24, 20, 20), r(5, 24, 10, 10)], [(24, 1, 3, 3)]),
        ("BnTrainForwardRelu6", [r(5, 24, 9, 9), r(24), r(24), one * 1e-3, np.zeros(24, np.float32),
                                 np.ones(24, np.float32), one * 0.1], [(5, 24, 9, 9), (24,), (24,)]),
        ("BnTrainBackwardRelu6", [r(5, 24, 9, 9), r(24), r(24), np.abs(r(24)), np.abs(r(5, 24, 9, 9)),
                                  r(5, 24, 9, 9), one * 1e-3], [(5, 24, 9, 9), (24,), (24,)]),
        ("IrBlockS1Res", [r(5, 24, 12, 12), r(144, 24, 1, 1), r(144), r(144, 1, 3, 3), r(144), r(24, 144, 1, 1),
                          r(24)], [(5, 24, 12, 12)]),
        ("IrBlockS1Res", [r(9, 32, 6, 6), r(192, 32, 1, 1), r(192), r(192, 1, 3, 3), r(192), r(32, 192, 1, 1),
                          r(32)], [(9, 32, 6, 6)]),  # small maps: several images per pass
        ("IrBlockS2", [r(1, 24, 20, 20), r(144, 24, 1, 1), r(144), r(144, 1, 3, 3), r(144), r(32, 144, 1, 1),
                       r(32)], [(1, 32, 10, 10)]),  # one image: layer by layer
        ("PwConvBiasRelu6", [r(1, 64, 14, 14), r(384, 64, 1, 1), r(384)], [(1, 384, 14, 14)]),
        ("PwConvBias", [r(5, 96, 7, 7), r(160, 96, 1, 1), r(160)], [(5, 160, 7, 7)]),
        ("Conv3x3BiasRelu6S2", [r(5, 3, 64, 64), r(32, 3, 3, 3), r(32)], [(5, 32, 32, 32)]),
        ("Conv3x3BiasRelu6S2", [r(1, 3, 96, 96), r(16, 3, 3, 3), r(16)], [(1, 16, 48, 48)]),  # rows split
        ("PwConvBias", [r(1, 96, 40, 40), r(24, 96, 1, 1), r(24)], [(1, 24, 40, 40)]),  # one image: A packed, B shared
        ("PoolDense", [r(5, 1280, 3, 3), r(1000, 1280), r(1000)], [(5, 1000)]),
        ("PoolDense", [r(2, 1280, 3, 3), r(1000, 1280), r(1000)], [(2, 1000)]),  # a few images: matrix-vector
        ("BiasAddResidual", [r(5, 24, 12, 12), r(24), r(5, 24, 12, 12)], [(5, 24, 12, 12)]),
    ]


def run_all(lib: ctypes.CDLL) -> Dict[str, np.ndarray]:
    """Every case's outputs (key: case index, entry point, output index)."""
    out = {}
    for i, (name, inputs, shapes) in enumerate(_cases()):
        outputs = [np.full(s, np.nan, np.float32) for s in shapes]
        call(lib, name, [x.copy() for x in inputs] + outputs)  # copies: BatchNorm updates its inputs 4 and 5
        for j, o in enumerate(outputs):
            out[f"{i}_{name}_{j}"] = o
    return out


def two_builds() -> int:
    """Child process: the native and the baseline (x86-64) builds loaded side by side, each run on every case."""
    import os

    from mindcv_mnv2.ops.depthwise import build_library, configure_team

    os.environ.pop("MINDCV_MNV2_MARCH", None)
    native = str(build_library())
    os.environ["MINDCV_MNV2_MARCH"] = "x86-64"
    build_library.cache_clear()
    baseline = str(build_library())
    assert native != baseline
    results = []
    for path in (native, baseline):
        assert configure_team(path) >= 1
        results.append(run_all(ctypes.CDLL(path)))
    for key, want in results[0].items():
        # FMA (native) against separate multiply and add (baseline): rounding, ~1e-6 of the output's scale
        err = float(np.abs(results[1][key].astype(np.float64) - want).max())
        assert err <= 1e-4 * max(1.0, float(np.abs(want).max())), (key, err)
    return 0


def main(argv: List[str]) -> int:
    """Child process: configure the team as the toolkit does, run every case, save the outputs."""
    if argv[:1] == ["--two-builds"]:
        return two_builds()
    if "--import-mindspore" in argv:
        import mindspore  # noqa: F401  (it sets OMP_NUM_THREADS=1 in the C environment as it loads)
    from mindcv_mnv2.ops.depthwise import configure_team, kernel_library

    path = kernel_library()
    size = configure_team(path)
    np.savez(argv[0], team_size=np.array(size), **run_all(ctypes.CDLL(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
