"""Process-wide MindSpore setup: device, execution mode, seeds, and on CPU the kernels' instruction set."""
from __future__ import annotations

import logging
import random

import numpy as np

log = logging.getLogger("mindcv_mnv2")


def setup_context(mode: int, device_target: str = "auto", seed: int = 42, cpu_isa: str = "auto") -> str:
    """Select device and graph (0) / PyNative (1) mode, seed every RNG; returns the device used.

    On CPU, ``cpu_isa`` chooses the oneDNN instruction-set cap first (ops.cpu_isa.choose): it takes
    effect when no MindSpore kernel has run yet in this process, as in train.py and validate.py.
    """
    import mindspore as ms
    import mindspore.dataset as ds

    built_for = ms.get_context("device_target") or "CPU"  # the package's own backend (CPU/GPU/Ascend wheel)
    if device_target == "auto":
        device_target = built_for
    if device_target == "CPU":
        from ..ops import cpu_isa as isa

        isa.choose(cpu_isa)
    elif device_target not in (built_for, "CPU"):
        from ..config import ConfigError

        raise ConfigError(f"device_target: {device_target} is not available to this MindSpore build (it runs "
                          f"{built_for}{'' if built_for == 'CPU' else ' and CPU'}); pass --device_target "
                          f"{built_for} (or auto)")
    try:
        ms.set_device(device_target)
    except RuntimeError:
        # The runtime already started on its default device (e.g. eager data ops ran first in
        # this process): fine when that is the device asked for, an error otherwise.
        if ms.get_context("device_target") != device_target:
            from ..config import ConfigError

            raise ConfigError(f"device_target: this process already runs MindSpore on "
                              f"{ms.get_context('device_target')}; start a new process for {device_target}") from None
    ms.set_context(mode=ms.GRAPH_MODE if mode == 0 else ms.PYNATIVE_MODE)
    if mode == 0:
        # O0 compiles kernel-by-kernel: fast to start, and the fused levels do not help on CPU.
        ms.set_context(jit_config={"jit_level": "O0"})
    ms.set_seed(seed)
    ds.config.set_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return device_target


def amp_level_for(device_target: str, amp_level: str) -> str:
    """The AMP level that will actually run: CPU kernels are fp32, so CPU runs O0 (with a warning)."""
    if device_target == "CPU" and amp_level != "O0":
        log.warning("amp_level %s is not supported on CPU (fp16 kernels are GPU/Ascend only): running O0 (fp32)",
                    amp_level)
        return "O0"
    return amp_level
