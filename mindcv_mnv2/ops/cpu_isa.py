"""The instruction-set cap of MindSpore's CPU kernels (oneDNN), chosen per machine by measurement.

oneDNN picks its code path from the CPU, and on AVX-512 machines its AVX-512 kernels ran
MobileNetV2's convolutions and BatchNorm 1.5-4.6x slower than its AVX2 ones (measured on an AMD
EPYC, family 25 model 17; issue "Fast on every CPU"). On a Zen 5 EPYC (family 26 model 2) the 1x1
convolutions were as fast or faster with AVX-512, but the 3x3 stride-2 stem ran 10-20x slower, and the
training step 0.4-0.6x the speed it had capped at AVX2. ``ONEDNN_MAX_CPU_ISA`` caps the code path;
oneDNN reads it when it creates its first kernel, so it is set here before a run executes anything.

Who decides, first match wins:
1. ``ONEDNN_MAX_CPU_ISA`` in the environment (the user's);
2. the recipe key ``cpu_isa`` when it names a cap;
3. ``cpu_isa: auto``: with only one code path worth trying (AVX2 machines: capping lower is never
   faster) nothing is measured; otherwise each candidate runs a small probe (the stem convolution, 1x1
   convolutions, BatchNorm and ReLU6, forward and backward, as in MobileNetV2) in a child process, once
   per machine and probe version, and the fastest is cached next to the kernel build cache, keyed by the CPU's model
   and flags. Results agree to float rounding whatever the cap (the test suite runs under several).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

from ..constants import CPU_ISA_CHOICES
from .depthwise import _cpu_signature, cache_dir

ENV = "ONEDNN_MAX_CPU_ISA"
DEFAULT = "DEFAULT"  # no cap: oneDNN's own choice
PROBE_TIMEOUT_S = 300.0
PROBE = Path(__file__).resolve().with_name("isa_probe.py")  # run by path: it imports no project code
# Bumped whenever the probe changes, so that a choice cached by an older probe is measured again
# (version 1 left out the stem convolution and chose wrongly on a Zen 5 EPYC).
PROBE_VERSION = 2

log = logging.getLogger("mindcv_mnv2")


class Decision(NamedTuple):
    """The cap in force for this process and why (one line for the run's log)."""

    cap: str  # DEFAULT or an oneDNN ISA name
    reason: str


_DECISION: Optional[Decision] = None  # process-wide, like the environment variable it sets
# The user's own setting is what the environment held before this module could change it.
_USER_ENV: Optional[str] = os.environ.get(ENV)


def cpu_flags() -> List[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty when unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def candidates(flags: List[str]) -> List[str]:
    """Caps worth measuring on a CPU with ``flags``: AVX-512 machines may be faster capped at AVX2."""
    return [DEFAULT, "AVX2"] if "avx512f" in flags else [DEFAULT]


def _cache_file() -> Path:
    key = hashlib.sha256(_cpu_signature().encode()).hexdigest()[:16]
    return cache_dir() / f"cpu_isa_{key}.json"


def _apply(cap: str) -> None:
    if cap == DEFAULT:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = cap


def environ_for(cap: str) -> Dict[str, str]:
    """A copy of this process's environment for a child that runs oneDNN under ``cap``."""
    env = dict(os.environ)
    env.pop(ENV, None)
    if cap != DEFAULT:
        env[ENV] = cap
    return env


def probe(cap: str) -> float:
    """Milliseconds per probe step with ``cap`` (a child process: the cap must be set before oneDNN starts)."""
    proc = subprocess.run([sys.executable, str(PROBE)], capture_output=True, text=True, env=environ_for(cap),
                          timeout=PROBE_TIMEOUT_S)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {cap} probe failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    return float(json.loads(lines[-1])["ms"])


def choose(setting: str = "auto") -> Decision:
    """Set ``ONEDNN_MAX_CPU_ISA`` for this process (see the module docstring); the decision."""
    global _DECISION
    if setting not in CPU_ISA_CHOICES:
        raise ValueError(f"cpu_isa must be one of {', '.join(CPU_ISA_CHOICES)}, not {setting!r}")
    if _USER_ENV is not None:
        _apply(_USER_ENV)
        _DECISION = Decision(_USER_ENV, f"{ENV}={_USER_ENV} from the environment")
    elif setting != "auto":
        _apply(setting)
        _DECISION = Decision(setting, f"cpu_isa: {setting} from the recipe")
    else:
        _DECISION = _auto()
        _apply(_DECISION.cap)
    return _DECISION


def _auto() -> Decision:
    cands = candidates(cpu_flags())
    if len(cands) == 1:
        return Decision(DEFAULT, "this CPU has no wider instruction set than AVX2 to choose between")
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
        if (cached.get("signature") == _cpu_signature() and cached.get("probe") == PROBE_VERSION
                and cached.get("cap") in cands):
            return Decision(cached["cap"], f"fastest on this CPU ({_timings(cached['ms'])}), measured once, "
                                           f"cached in {path}")
    except (OSError, ValueError):
        pass
    timings: Dict[str, float] = {}
    for cap in cands:
        try:
            timings[cap] = probe(cap)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            log.debug("cpu_isa probe %s: %s", cap, exc)
    if not timings:
        return Decision(DEFAULT, "the probes could not run; oneDNN's own choice")
    best = min(timings, key=timings.get)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"cap": best, "ms": timings, "probe": PROBE_VERSION, "signature": _cpu_signature(),
                                   "time": time.strftime("%Y-%m-%d %H:%M:%S")}))
        os.replace(tmp, path)  # several ranks may measure at once; the last rename wins, all agree
        where = f"cached in {path}"
    except OSError as exc:
        where = f"not cached ({exc.strerror})"
    return Decision(best, f"fastest on this CPU ({_timings(timings)}), {where}")


def _timings(ms: Dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())


def describe() -> str:
    """One line for a run's log: the cap in force and why."""
    if _DECISION is None:
        return "MindSpore CPU kernels: oneDNN's own instruction set (not chosen by this toolkit)"
    cap = "no cap" if _DECISION.cap == DEFAULT else f"capped at {_DECISION.cap}"
    return f"MindSpore CPU kernels (oneDNN): {cap}: {_DECISION.reason}"
