"""Data-parallel process groups: launcher detection, init, rank/world, exact sums across ranks.

Launchers:

- ``mpirun -n N python train.py ...`` (Open MPI, with mpi4py): on Ascend and GPU MindSpore's own
  mpirun support initialises the group; on CPU MindSpore needs its dynamic cluster, which
  :mod:`mindcv_mnv2.distributed.mpi_bootstrap` starts from the MPI world (a scheduler on rank 0).
- ``msrun --worker_num N --local_worker_num N train.py ...``: MindSpore's launcher sets the
  dynamic-cluster variables itself. It also runs the script once as the scheduler
  (``MS_ROLE=MS_SCHED``); in that process ``init()`` serves the cluster and never returns.
- a rank table (``RANK_TABLE_FILE``, Ascend).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import DistributedError  # noqa: F401  (raised here; re-exported)
from .mpi_bootstrap import bootstrap_cpu_cluster


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world: int = 1
    launcher: str = ""

    @property
    def is_main(self) -> bool:
        """True on the process that prints, logs metrics and writes checkpoints."""
        return self.rank == 0


LAUNCH_HELP = ("launch with one of:\n"
               "  mpirun -n 8 python train.py --config CONFIG --data_dir DIR\n"
               "  msrun --worker_num 8 --local_worker_num 8 train.py --config CONFIG --data_dir DIR\n"
               "or train on one device with --distribute False")


def detect_launcher() -> str:
    """Which launcher started this process: 'msrun', 'mpirun', 'rank_table' or ''."""
    if os.environ.get("MS_ROLE"):
        return "msrun"
    if os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE") or os.environ.get("PMIX_RANK"):
        return "mpirun"
    if os.environ.get("RANK_TABLE_FILE") or os.environ.get("MINDSPORE_HCCL_CONFIG_PATH"):
        return "rank_table"
    return ""


def launched_world_size() -> int:
    """Number of processes the launcher started (1 when unknown or not launched)."""
    for var in ("MS_WORKER_NUM", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "RANK_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 1


def init_distributed(enabled: bool, device_target: str, require_launcher: bool = True) -> DistInfo:
    """Join the process group when ``enabled`` (recipe key ``distribute``); else a world of one.

    With ``require_launcher`` False (validation: one process gives the same numbers), an enabled
    run that no launcher started runs as a world of one instead of stopping.
    """
    launcher = detect_launcher()
    if not enabled:
        if launcher in ("msrun", "mpirun") and launched_world_size() > 1:
            # N copies of a standalone run would all write the same checkpoints (and msrun's
            # scheduler process would train too).
            raise DistributedError(f"this process is one of {launched_world_size()} started by {launcher}, but "
                                   f"distribute is False; pass --distribute True for data-parallel training, or "
                                   f"run without {launcher} to train on one device")
        return DistInfo()
    if not launcher:
        if not require_launcher:
            return DistInfo()
        raise DistributedError("distribute is True but this process was not started by a launcher; " + LAUNCH_HELP)
    if launcher == "mpirun" and device_target == "CPU":
        bootstrap_cpu_cluster()  # CPU needs MindSpore's dynamic cluster
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    try:
        init()
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        where = os.environ.get("MS_NODE_ID") or os.environ.get("OMPI_COMM_WORLD_RANK") or "?"
        raise DistributedError(f"rank {where}: joining the {launcher} process group failed: {first[:300]}") from None
    world = get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=world)
    return DistInfo(rank=get_rank(), world=world, launcher=launcher)


def all_reduce_sum(values: Sequence[float], dist: DistInfo) -> np.ndarray:
    """Sum a small vector of counts over all ranks (identity for a world of one)."""
    arr = np.asarray(values, dtype=np.float64)
    if dist.world == 1:
        return arr
    import mindspore as ms
    from mindspore import ops

    # float32 holds integer counts exactly up to 2**24 images (ImageNet val has 50,000).
    out = ops.AllReduce()(ms.Tensor(arr.astype(np.float32)))
    return np.asarray(out.asnumpy(), dtype=np.float64)
