"""A faster depthwise 3x3 convolution for CPU: the project's C++ kernels as MindSpore AOT custom ops.

On CPU, MindSpore 2.10's grouped nn.Conv2d runs depthwise 3x3 at ~1 GFLOP/s and dominates
MobileNetV2's step time. ``depthwise.cc`` (forward, input gradient, weight gradient; NCHW
float32; stride 1 or 2, or dilation 2 or 4 for output_stride 16 / 8) is compiled once per
machine with g++ into a cache directory and called through ``ops.Custom(func_type="aot")``;
:class:`AotDepthwise` has a ``bprop`` so it trains in graph and PyNative mode. :func:`swap_depthwise` replaces the eligible convs of a built
network in place, keeping each weight Parameter (same names, values and optimizer state), so
checkpoints are interchangeable with the native kernel. Results agree with nn.Conv2d to float
rounding (tests/test_fast_depthwise.py). Ascend and GPU keep their native kernels.

The cache is ``$MINDCV_MNV2_CACHE`` or ``$XDG_CACHE_HOME/mindcv_mnv2`` (default
``~/.cache/mindcv_mnv2``); the library name hashes the source, the compiler and this CPU's
model and flags, because ``-march=native`` code may not run on another CPU sharing the directory.
``$MINDCV_MNV2_MARCH`` overrides ``-march`` (and is part of the name).
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Tuple

if TYPE_CHECKING:
    from mindspore import Parameter, nn

# one shared library: the depthwise kernels, the training BatchNorm (+ ReLU6) kernels, the
# inference (BatchNorm folded) convolutions and blocks, and the fused momentum update; HEADERS are
# part of its hash
SOURCES = tuple(Path(__file__).resolve().with_name(n)
                for n in ("depthwise.cc", "batchnorm.cc", "pointwise.cc", "momentum.cc"))
HEADERS = tuple(Path(__file__).resolve().with_name(n) for n in ("dw_plane.h", "team.h"))
from ..constants import DEPTHWISE_KERNELS as CHOICES  # noqa: E402
BUILD_TIMEOUT_S = 300.0  # a compile takes ~10 s; past this the compiler is taken to hang
# -march of the build: this CPU's own instructions unless MINDCV_MNV2_MARCH names a target
# (e.g. x86-64 or x86-64-v2: baseline code, to check results do not depend on AVX2/AVX-512).
MARCH_ENV = "MINDCV_MNV2_MARCH"

log = logging.getLogger("mindcv_mnv2")


from ..errors import KernelBuildError  # noqa: F401  (raised here; re-exported)


def cache_dir() -> Path:
    """Directory holding compiled kernels (created on first build)."""
    env = os.environ.get("MINDCV_MNV2_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mindcv_mnv2"


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "unknown-cpu"
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(lines)))


def _compiler() -> str:
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise KernelBuildError(f"no C++ compiler ({os.environ.get('CXX', 'g++')}) on PATH to build the fast "
                               f"depthwise kernel: install g++ (apt-get install g++), or set depthwise_kernel: "
                               f"native")
    return cxx


def _march() -> str:
    march = os.environ.get(MARCH_ENV, "native").strip() or "native"
    if not all(c.isalnum() or c in "-_.+" for c in march):
        raise KernelBuildError(f"{MARCH_ENV}={march!r} is not a -march target name (e.g. native, x86-64, "
                               f"x86-64-v3); unset it to build for this CPU")
    return march


@lru_cache(maxsize=None)
def build_library() -> Path:
    """Compile the C++ kernels (SOURCES) for this machine once (cached on disk); the shared library's path."""
    cxx = _compiler()
    march = _march()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelBuildError(f"{cxx} --version failed ({exc}); set depthwise_kernel: native") from None
    key = hashlib.sha256(b"".join(f.read_bytes() for f in SOURCES + HEADERS) + version.encode() + _cpu_signature().encode()
                         + march.encode()).hexdigest()[:16]
    out_dir = cache_dir()
    lib = out_dir / f"libmnv2_depthwise_{key}.so"
    if lib.exists():
        return lib
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Build under a unique name, then rename: ranks of one job may build at the same moment.
        fd, tmp = tempfile.mkstemp(prefix=lib.stem + ".", suffix=".tmp.so", dir=out_dir)
        os.close(fd)
    except OSError as exc:
        raise KernelBuildError(f"cannot write the kernel cache {out_dir} ({exc.strerror}): set MINDCV_MNV2_CACHE "
                               f"to a writable directory, or set depthwise_kernel: native") from None
    # -fvisibility=hidden: only the entry points are exported (the .cc files mark them), so that two
    # builds loaded into one process (another -march, a benchmark's A/B) never bind to each other's code
    cmd = [cxx, "-O3", f"-march={march}", "-fopenmp-simd", "-pthread", "-fvisibility=hidden", "-shared", "-fPIC",
           *map(str, SOURCES), "-o", tmp]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:  # e.g. a compiler that hangs past the timeout
            raise KernelBuildError(f"building the fast depthwise kernel failed ({exc}); set depthwise_kernel: "
                                   f"native to skip it") from None
        if proc.returncode != 0:
            raise KernelBuildError(f"building the fast depthwise kernel failed ({' '.join(cmd)}):\n"
                                   f"{proc.stderr.strip()[-1500:]}\nset depthwise_kernel: native to skip it")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.debug("built %s", lib)
    return lib


# How long (microseconds) an idle thread of the kernels' team (team.h) spins before it sleeps. In
# training MindSpore's own kernels run between ours and need the cores: spinning made the demo's step
# up to 1.6x slower (300-1000 us), and never faster. Inference runs our kernels back to back: 300 us
# spans the gaps, 4-7% faster than sleeping at once (BENCHMARKS.md section 12).
TRAIN_SPIN_US = 0
INFERENCE_SPIN_US = 300


def _user_threads() -> int:
    """The user's OMP_NUM_THREADS (0: unset or not a number); the team then uses every CPU it may."""
    # os.environ is the process's environment as Python sees it: MindSpore sets OMP_NUM_THREADS=1
    # in the C environment when it loads, which the C++ side would read instead.
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else 0


@lru_cache(maxsize=None)
def _loaded(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)  # the handle MindSpore's custom operators get too: one library, one team
    lib.Mnv2TeamConfigure.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def configure_team(path: str, spin_us: int = TRAIN_SPIN_US) -> int:
    """Load a build of the kernels into this process and set up its thread team; the team's size."""
    return _loaded(path).Mnv2TeamConfigure(_user_threads(), int(spin_us))


@lru_cache(maxsize=None)
def kernel_library() -> str:
    """build_library()'s path, loaded into this process with its thread team set up (size and spin)."""
    path = str(build_library())
    log.debug("C++ kernels: %d threads", configure_team(path))
    return path


@contextmanager
def inference_spin() -> Iterator[None]:
    """Within: the kernels' idle threads spin INFERENCE_SPIN_US between kernels; after: TRAIN_SPIN_US again."""
    # Once per batch: the spin alone (size 0 leaves the team as it is), not configure_team's environment read.
    lib = _loaded(kernel_library())
    lib.Mnv2TeamConfigure(0, INFERENCE_SPIN_US)
    try:
        yield
    finally:
        lib.Mnv2TeamConfigure(0, TRAIN_SPIN_US)


def resolve_kernel(choice: str, device_target: str) -> Tuple[str, Optional[str]]:
    """('aot' or 'native', why native was chosen for 'auto' or None) for a device."""
    if choice not in CHOICES:
        raise ValueError(f"depthwise_kernel must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "native":
        return "native", None
    if device_target != "CPU":
        if choice == "aot":
            raise KernelBuildError(f"depthwise_kernel: aot is a CPU kernel but device_target is {device_target}; "
                                   f"use auto or native there")
        return "native", f"{device_target} has its own depthwise kernel"
    try:
        build_library()
    except KernelBuildError as exc:
        if choice == "aot":
            raise
        return "native", str(exc).splitlines()[0]
    return "aot", None


def _out_hw(n: int, stride: int) -> int:
    return (n - 1) // stride + 1  # padding = dilation: ceil(n / stride) for every supported dilation


@lru_cache(maxsize=None)
def _cell_classes():
    """(AotDepthwiseOp, AotDepthwise) classes; built lazily so importing this module needs no MindSpore."""
    import mindspore as ms
    from mindspore import nn, ops

    lib = kernel_library()

    class AotDepthwiseOp(nn.Cell):
        """y = depthwise3x3(x, w): C++ forward; bprop calls the C++ input and weight gradients."""

        def __init__(self, stride: int, dilation: int) -> None:
            super().__init__()
            s, tag = int(stride), f"S{int(stride)}_D{int(dilation)}"
            self.fwd = ops.Custom(f"{lib}:DwForward{tag}",
                                  out_shape=lambda xs, ws: [xs[0], xs[1], _out_hw(xs[2], s), _out_hw(xs[3], s)],
                                  out_dtype=lambda xt, wt: xt, func_type="aot")
            self.grad_x = ops.Custom(f"{lib}:DwGradInput{tag}", out_shape=lambda xs, ws, gs: xs,
                                     out_dtype=lambda xt, wt, gt: xt, func_type="aot")
            self.grad_w = ops.Custom(f"{lib}:DwGradWeight{tag}", out_shape=lambda xs, gs: [xs[1], 1, 3, 3],
                                     out_dtype=lambda xt, gt: xt, func_type="aot")

        def construct(self, x, w):
            return self.fwd(x, w)

        def bprop(self, x, w, out, dout):
            return self.grad_x(x, w, dout), self.grad_w(x, dout)

    shared_ops = {}

    class AotDepthwise(nn.Cell):
        """Depthwise 3x3 layer (weight C x 1 x 3 x 3, padding = dilation, no bias) on the C++ kernels."""

        def __init__(self, weight: ms.Parameter, stride: int, dilation: int = 1) -> None:
            super().__init__()
            key = (int(stride), int(dilation))
            if key not in shared_ops:
                shared_ops[key] = AotDepthwiseOp(*key)
            self.op = shared_ops[key]
            self.weight = weight  # the replaced conv's Parameter: same name, value and optimizer slot
            self.stride, self.dilation = int(stride), int(dilation)

        def construct(self, x):
            return self.op(x, self.weight)

    return AotDepthwiseOp, AotDepthwise


# (stride, dilation) pairs compiled in depthwise.cc
SUPPORTED = ((1, 1), (2, 1), (1, 2), (1, 4))


def aot_depthwise(weight: Parameter, stride: int, dilation: int = 1) -> nn.Cell:
    """An AotDepthwise cell using ``weight`` (a C x 1 x 3 x 3 Parameter); padding equals ``dilation``."""
    if (int(stride), int(dilation)) not in SUPPORTED:
        raise ValueError(f"the C++ depthwise kernel has no stride {stride} / dilation {dilation} variant "
                         f"(supported: {SUPPORTED})")
    return _cell_classes()[1](weight, stride, dilation)


def _eligible(conv) -> bool:
    from mindspore import nn

    if type(conv) is not nn.Conv2d:  # TFSameConv2d (asymmetric padding) and others keep their kernel
        return False
    stride, dilation = tuple(conv.stride), tuple(conv.dilation)
    if stride[0] != stride[1] or dilation[0] != dilation[1] or (stride[0], dilation[0]) not in SUPPORTED:
        return False
    d = dilation[0]
    pad = conv.padding if isinstance(conv.padding, int) else tuple(conv.padding)
    return (conv.group == conv.in_channels == conv.out_channels and tuple(conv.kernel_size) == (3, 3)
            and conv.pad_mode == "pad" and pad in (d, (d, d, d, d)) and not conv.has_bias)


def swap_depthwise(net: nn.Cell) -> int:
    """Replace every eligible depthwise 3x3 nn.Conv2d in ``net`` by AotDepthwise in place; the count."""
    from mindspore import nn

    swapped = 0
    for _, parent in list(net.cells_and_names()):
        for key, child in list(parent.name_cells().items()):
            if not _eligible(child):
                continue
            new = aot_depthwise(child.weight, int(tuple(child.stride)[0]), int(tuple(child.dilation)[0]))
            if isinstance(parent, nn.SequentialCell):
                parent[int(key)] = new
            else:
                setattr(parent, key, new)
            swapped += 1
    return swapped


def apply_depthwise_kernel(net: nn.Cell, choice: str, device_target: str) -> str:
    """Swap in the CPU training kernels (C++ depthwise 3x3 and BatchNorm + ReLU6, matrix-product
    pooling: ops.pooling) when ``choice`` resolves to aot."""
    kernel, why = resolve_kernel(choice, device_target)
    if kernel == "aot":
        from .batchnorm import swap_batchnorm  # here, not at the top: batchnorm imports build_library from us
        from .pooling import swap_pooling

        n, n_bn, n_pool = swap_depthwise(net), swap_batchnorm(net), swap_pooling(net)
        log.debug("C++ kernels: %d depthwise layers, %d BatchNorm layers; %d pooling", n, n_bn, n_pool)
    elif why and choice == "auto" and device_target == "CPU":
        log.warning("depthwise_kernel auto: using MindSpore's slower native depthwise conv (%s)", why)
    return kernel


def kernel_in_use(net: nn.Cell) -> str:
    """'aot' if any depthwise conv of ``net`` runs on the C++ kernel, else 'native'."""
    return "aot" if any(type(c).__name__ == "AotDepthwise" for _, c in net.cells_and_names()) else "native"
