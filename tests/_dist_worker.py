"""Run by tests/test_distributed.py under mpirun: train.py's job, then every rank dumps its state.

    mpirun -n 2 python tests/_dist_worker.py DUMP_DIR [train.py arguments...]

Same command-line handling as train.py (mindcv_mnv2.cli.run); after Trainer.fit() each rank
writes DUMP_DIR/rank<r>.npz with every parameter of its training step (weights, BN statistics,
optimizer state), which only rank 0's checkpoints would otherwise show.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from mindcv_mnv2.cli import run  # noqa: E402


def main() -> int:
    dump_dir, argv = sys.argv[1], sys.argv[2:]

    def job(cfg, extras):
        from mindcv_mnv2.engine.trainer import Trainer

        trainer = Trainer(cfg)
        trainer.fit()
        state = {name: p.asnumpy() for name, p in trainer.step.parameters_dict().items()}
        np.savez(os.path.join(dump_dir, f"rank{trainer.dist.rank}.npz"), **state)

    return run(argv, "train.py", job)


if __name__ == "__main__":
    sys.exit(main())
