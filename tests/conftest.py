"""Shared pytest fixtures: MindSpore on CPU, execution-mode switches, the reference fixtures in tests/fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

import mindcv_mnv2  # noqa: F401  (before any MindSpore import: it sets OMP_WAIT_POLICY for the C++ kernel)
import mindspore  # noqa: E402

# Pin the device before any test runs a kernel: MindSpore refuses set_device once its runtime started.
mindspore.set_device("CPU")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"  # provenance: tests/fixtures/README.md


@pytest.fixture(scope="session")
def ms_cpu():
    """MindSpore imported and pinned to the CPU backend."""
    return mindspore


def _mode(ms, mode):
    previous = ms.get_context("mode")
    ms.set_context(mode=mode)
    return previous


@pytest.fixture
def pynative(ms_cpu):
    """Run the test in PyNative mode (restores the previous mode afterwards)."""
    previous = _mode(ms_cpu, ms_cpu.PYNATIVE_MODE)
    yield ms_cpu
    ms_cpu.set_context(mode=previous)


@pytest.fixture
def graph(ms_cpu):
    """Run the test in graph mode (restores the previous mode afterwards)."""
    previous = _mode(ms_cpu, ms_cpu.GRAPH_MODE)
    yield ms_cpu
    ms_cpu.set_context(mode=previous)


@pytest.fixture(scope="session")
def mindcv_fixtures() -> Path:
    """tests/fixtures/mindcv: MindCV's parameter lists and a width-0.35 checkpoint made by MindCV."""
    return FIXTURES / "mindcv"


# ---- data fixtures (maintained with the data pipeline; defined in tests/_data_fixtures.py) ----
# tiny_imagefolder: real-photo ImageFolder, train/ 3x8 + val/ 3x5 JPEGs of ~64 px (session-scoped)
# fashion_mnist_tiny: Fashion-MNIST ImageFolder, 200 train / 100 val RGB 32 px PNGs (session-scoped)
from ._data_fixtures import fashion_mnist_tiny, tiny_imagefolder  # noqa: E402,F401


# `make test` runs two pytest-xdist workers, each taking whole files (--dist loadfile). Files are
# handed out in collection order, so the long ones go first: otherwise one worker is left with a
# long file at the end while the other idles (the order inside each file is kept).
LONG_FILES_FIRST = ("test_engine.py", "test_reliability.py", "test_distributed.py", "test_bench_smoke.py",
                    "test_deploy.py", "test_finetune.py", "test_transfer.py", "test_curves.py", "test_demo.py",
                    "test_fast_depthwise.py")


def pytest_collection_modifyitems(session, config, items):
    """Put the long-running test files first (stable: each file's own order is unchanged)."""
    rank = {name: i for i, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
