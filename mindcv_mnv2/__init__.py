"""mindcv_mnv2: MobileNetV2 on MindSpore, from MindCV recipes to validated, deployable models.

The public entry points are imported lazily so that ``mindcv_mnv2.config`` (and a config
error) never waits for MindSpore to import.
"""
import os
from typing import Any

# MindSpore loads libgomp and some of its CPU kernels run OpenMP threads. libgomp's default spinning
# wait makes idle threads compete with MindSpore's own thread pool: training measured up to 1.3x
# slower with OMP_WAIT_POLICY=ACTIVE on 2 cores (the project's C++ kernels have their own threads,
# ops/team.h). The policy is read when libgomp loads, so it is set here, before MindSpore is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

_LAZY = {
    "create_model": "mindcv_mnv2.models",
    "list_models": "mindcv_mnv2.models",
    "load_model": "mindcv_mnv2.checkpoint",
    "convert_keras": "mindcv_mnv2.tools.convert_keras",
    "load_config": "mindcv_mnv2.config",
    "Config": "mindcv_mnv2.config",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mindcv_mnv2' has no attribute '{name}'")
