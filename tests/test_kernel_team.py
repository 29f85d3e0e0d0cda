"""The C++ kernels' thread team (mindcv_mnv2/ops/team.h): its size, results independent of it, calls
from several threads at once, and a forked child."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from mindcv_mnv2.ops.depthwise import configure_team, kernel_library

from . import _kernel_calls

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lib():
    path = kernel_library()
    configure_team(path)
    return ctypes.CDLL(path)


def _child(tmp_path: Path, threads: str, import_mindspore: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads:
        env["OMP_NUM_THREADS"] = threads
    out = tmp_path / f"team_{threads or 'default'}.npz"
    argv = [sys.executable, "-m", "tests._kernel_calls", str(out)] + (["--import-mindspore"] if import_mindspore else [])
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out) as data:
        return dict(data)


def test_team_size_is_the_users_omp_num_threads_even_after_mindspore_overwrites_it(tmp_path):
    # MindSpore sets OMP_NUM_THREADS=1 in the C environment as it loads; the team must not read that.
    assert int(_child(tmp_path, "3")["team_size"]) == 3
    assert int(_child(tmp_path, "")["team_size"]) == len(os.sched_getaffinity(0))


@pytest.mark.numerics
@pytest.mark.parametrize("threads", ["1", "3"])
def test_results_do_not_depend_on_the_team_size(lib, tmp_path, threads):
    # Every output element is computed by one thread in a fixed order: bit-identical whatever the split.
    here = _kernel_calls.run_all(lib)
    there = _child(tmp_path, threads, import_mindspore=False)
    assert int(there.pop("team_size")) == int(threads)
    assert set(here) == set(there)
    for key, value in here.items():
        assert np.isfinite(value).all(), key  # every output element written
        assert np.array_equal(value, there[key]), key


def test_calls_from_two_threads_at_once_match_one_at_a_time(lib):
    # MindSpore may launch two kernels at once from its own threads: the second runs on its caller alone.
    want = _kernel_calls.run_all(lib)
    got, errors = [{}, {}], []

    def worker(k: int) -> None:
        try:
            for _ in range(5):
                got[k] = _kernel_calls.run_all(lib)
        except Exception as exc:  # noqa: BLE001  (reported below, on the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and not any(t.is_alive() for t in threads)
    for result in got:
        assert set(result) == set(want)
        for key, value in want.items():
            assert np.array_equal(result[key], value), key


def _forked(queue) -> None:
    path = kernel_library()
    queue.put(_kernel_calls.run_all(ctypes.CDLL(path)))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
def test_a_forked_child_runs_the_kernels(lib):
    # The child inherits the team's state but none of its threads: it must start its own, not wait forever.
    want = _kernel_calls.run_all(lib)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_forked, args=(queue,), daemon=True)
    proc.start()
    try:
        got = queue.get(timeout=120)  # a child stuck waiting for threads it does not have ends here
        proc.join(timeout=60)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
    for key, value in want.items():
        assert np.array_equal(got[key], value), key



def test_only_the_entry_points_are_exported():
    # A team (or any helper) exported from the library would be shared, by the dynamic linker, with a
    # second build loaded into the same process (another -march, a benchmark's A/B), whatever its layout:
    # that hung. Only the extern "C" entry points (and the C++ runtime's own templates) may be visible.
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm (binutils) to read the symbol table")
    out = subprocess.run([nm, "-D", "--defined-only", "-C", kernel_library()], capture_output=True, text=True,
                         check=True).stdout
    names = [line.split(maxsplit=2)[2] for line in out.splitlines() if len(line.split(maxsplit=2)) == 3]
    assert "Mnv2TeamConfigure" in names and "IrBlockS1Res" in names
    leaked = [n for n in names if "mnv2::" in n and "std::thread" not in n]
    assert not leaked, leaked[:10]


def test_native_and_baseline_builds_side_by_side_agree():
    # Two builds in one process, each on its own team, agree to rounding (FMA or not). In a child, so
    # that a hang ends at the timeout instead of the suite.
    env = {k: v for k, v in os.environ.items() if k != "MINDCV_MNV2_MARCH"}
    proc = subprocess.run([sys.executable, "-m", "tests._kernel_calls", "--two-builds"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
