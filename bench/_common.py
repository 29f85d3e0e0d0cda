"""Shared plumbing of the bench scripts: paths, machine facts, data folders, timing, JSON results.

Every comparison in BENCHMARKS.md is a RATIO measured side by side in one run: the contenders
run as interleaved repetitions (A B A B ...) and each side's median is taken, so a change in
the machine's load (the 2 cores are shared) hits both sides alike. The load average is recorded
before and after every measurement (``loadavg()``) and stored next to each figure.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
CACHE = Path(os.environ.get("MNV2_BENCH_CACHE", BENCH / ".cache"))
PROJECT_PY = Path(os.environ.get("MNV2_PROJECT_PY", ROOT / ".venv" / "bin" / "python"
                                 if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable))
BENCH_PY = Path(os.environ.get("MNV2_BENCH_PY", BENCH / ".venv" / "bin" / "python"))
FASHION = ROOT / "data" / "fashion_mnist"


def loadavg() -> List[float]:
    """The 1/5/15-minute load averages (other agents share this machine's cores)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:  # pragma: no cover - non-Linux
        return [float("nan")] * 3


def machine() -> Dict[str, Any]:
    """CPU model, core count, memory, Python, and the load at the moment of asking."""
    model = platform.processor() or "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        mem_kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines()
                          if ln.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration):
        mem_kb = 0
    return {"cpu": model, "cores": os.cpu_count(), "mem_gib": round(mem_kb / 2 ** 20, 1),
            "python": platform.python_version(), "loadavg": loadavg(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def median(xs: Iterable[float]) -> float:
    """Median of the finite values (nan if none)."""
    vals = [float(x) for x in xs if x == x]
    return statistics.median(vals) if vals else float("nan")


def ratio(a: float, b: float) -> float:
    """a / b, nan when b is 0 or missing."""
    return a / b if b and b == b else float("nan")


def write_result(name: str, payload: Dict[str, Any], quick: bool = False) -> Path:
    """Write bench/results/<name>.json (<name>.quick.json for smoke runs, which are git-ignored)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'.quick' if quick else ''}.json"
    payload = {"name": name, "quick": quick, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=1, default=float) + "\n")
    return path


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: Optional[str] = None) -> str:
    """Print (and return) a Markdown table; floats get 3 significant-ish digits."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "-"
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ([f"**{title}**", ""] if title else []) + ["| " + " | ".join(headers) + " |",
                                                       "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines)
    print(text + "\n", flush=True)
    return text


# ----------------------------------------------------------------------------- data folders
def photo_source() -> Optional[Path]:
    """The folder of 100 JPEGs inside the ai-benchmark wheel, located without importing it (it needs TF)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("ai_benchmark")
    except (ImportError, ValueError):
        spec = None
    places = list(spec.submodule_search_locations or []) if spec else []
    places += [str(p) for p in (ROOT / ".venv" / "lib").glob("python3*/site-packages/ai_benchmark")]
    for place in places:
        folder = Path(place) / "data" / "classification"
        if any(folder.glob("*.jpg")):
            return folder
    return None


def photo_folder(per_class_train: int = 32, per_class_val: int = 10, classes: int = 10) -> Path:
    """An ImageFolder of the 100 real 512x512 JPEGs shipped by ai-benchmark, replicated into classes.

    Files are hard links (copies where linking fails) under bench/.cache, built once. Image i of
    class c is photo (c * per_class + i) % 100, so every class holds different photos.
    """
    src = photo_source()
    if src is None:
        raise FileNotFoundError("the ai-benchmark wheel's photos were not found; pip install ai-benchmark==0.1.2 "
                                "into .venv (it is in requirements.txt)")
    photos = sorted(src.glob("*.jpg"), key=lambda p: (len(p.stem), p.stem))
    root = CACHE / f"photos_{classes}x{per_class_train}_{per_class_val}"
    done = root / ".complete"
    if done.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    for split, per in (("train", per_class_train), ("val", per_class_val)):
        for c in range(classes):
            d = root / split / f"class_{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per):
                src = photos[(c * per + i) % len(photos)]
                dst = d / f"{i:04d}_{src.name}"
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
    done.write_text("ok\n")
    return root


def fashion_folder(quick: bool = False) -> Optional[Path]:
    """data/fashion_mnist if it has been prepared (python -m mindcv_mnv2.tools.prepare_fashion_mnist);
    for --quick runs without it, a 1,024-image subset prepared once into the bench cache."""
    if (FASHION / "train").is_dir():
        return FASHION
    if not quick:
        return None
    sub = CACHE / "fashion_mnist_1k"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the project is used from the repository, not installed
    try:
        from mindcv_mnv2.tools.prepare_fashion_mnist import prepare_fashion_mnist

        prepare_fashion_mnist(str(sub), limit_train=1024, limit_val=100, workers=1)
    except (OSError, ValueError):  # the Debian package dataset-fashion-mnist is not installed
        return None
    return sub


def measure_throughput(loader: Any, max_batches: Optional[int] = None, warmup_batches: int = 1) -> dict:
    """Images per second the pipeline delivers over one pass, timed after ``warmup_batches``."""
    import time

    seen, timed = 0, 0
    t0 = time.perf_counter()
    it = loader.dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)
    for i, (images, _) in enumerate(it):
        if i < warmup_batches:
            t0 = time.perf_counter()  # the clock starts once the warm-up batches are out
            continue
        seen += len(images)
        timed += 1
        if max_batches is not None and timed >= max_batches:
            break
    seconds = time.perf_counter() - t0
    return {"images": seen, "seconds": seconds, "images_per_second": seen / seconds if seen else float("nan")}


# ----------------------------------------------------------------------------- processes
def run_child(cmd: Sequence[str], *, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None,
              timeout: float = 900.0, log: Optional[Path] = None) -> Dict[str, Any]:
    """Run a command; wall time, exit code, peak RSS (MiB, from wait4) and its last JSON line."""
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONPATH", str(ROOT))
    out = open(log, "w") if log else subprocess.DEVNULL
    load0 = loadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(map(str, cmd)), cwd=str(cwd or ROOT), env=full_env, stdout=subprocess.PIPE,
                            stderr=out, text=True)
    lines: List[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if log is None and os.environ.get("MNV2_BENCH_VERBOSE"):
                sys.stderr.write(line)
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                break
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        if log:
            out.close()
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    result = None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except ValueError:
                continue
    return {"cmd": " ".join(map(str, cmd)), "exit": code, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
            "result": result, "load_before": load0, "load_after": loadavg(),
            "stdout_tail": "".join(lines[-5:]) if code else ""}


def time_blocks(runners: Dict[str, Callable[[], Any]], blocks: int, per_block: int) -> Dict[str, List[float]]:
    """Warm each runner up once, then time calls in interleaved blocks (A A B B A A B B ...); seconds per call."""
    for fn in runners.values():
        fn()
    times: Dict[str, List[float]] = {k: [] for k in runners}
    for _ in range(blocks):
        for k, fn in runners.items():
            for _ in range(per_block):
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    return times


def interleave(contenders: Dict[str, Callable[[], Dict[str, Any]]], reps: int,
               announce: bool = True) -> Dict[str, List[Dict[str, Any]]]:
    """Run each contender once per repetition, in turn (A B C A B C ...); lists of their results."""
    out: Dict[str, List[Dict[str, Any]]] = {k: [] for k in contenders}
    for r in range(reps):
        for name, fn in contenders.items():
            load0 = loadavg()
            t0 = time.perf_counter()
            res = fn()
            res.setdefault("load_before", load0)
            res.setdefault("load_after", loadavg())
            out[name].append(res)
            if announce:
                print(f"  rep {r + 1}/{reps} {name}: {_brief(res)} ({time.perf_counter() - t0:.0f}s, "
                      f"load {load0[0]:.2f})", file=sys.stderr, flush=True)
    return out


def _brief(res: Dict[str, Any]) -> str:
    keys = [k for k in ("img_per_s", "ms", "first_step_s", "peak_rss_mib", "exit") if k in res]
    return ", ".join(f"{k}={res[k]:.4g}" if isinstance(res[k], float) else f"{k}={res[k]}" for k in keys)


def have_bench_venv() -> bool:
    """Whether bench/.venv (MindCV 0.3.0 + PyTorch; bash bench/setup_venv.sh) exists."""
    return BENCH_PY.exists()


def paired_ratios(runs: Dict[str, List[Dict[str, Any]]], a: str, b: str, key: str = "img_per_s") -> List[float]:
    """Per-repetition ratios a/b of neighbouring runs (same repetition, so the same load)."""
    return [ratio(x.get(key, float("nan")), y.get(key, float("nan"))) for x, y in zip(runs[a], runs[b])]
