"""``mnistgen train`` as one torchrun worker, with a fault injected; test_ddp.py launches it.

usage: python -m torch.distributed.run --standalone --nproc_per_node=2 ddp_job.py MODE train ...
MODE: ``none``; ``kill-after-first-checkpoint`` (every rank dies like kill -9 once the first
checkpoint is on disk); ``raise-on-rank-1`` (rank 1 raises inside its second step).
"""

import os
import sys

import torch.distributed as dist

from mnistgen.cli import main
from mnistgen.training.trainer import Trainer

mode, argv = sys.argv[1], sys.argv[2:]
if mode == "kill-after-first-checkpoint":
    save = Trainer.save

    def save_then_die(self, epoch_file):
        save(self, epoch_file)
        dist.barrier()  # rank 0 has written the file
        os._exit(137)  # no clean-up of any kind

    Trainer.save = save_then_die
elif mode == "raise-on-rank-1":
    step = Trainer.train_step

    def failing_step(self, idx, measure=False):
        if self.rank == 1 and self.step == 1:
            raise RuntimeError("injected failure on rank 1")
        step(self, idx, measure)

    Trainer.train_step = failing_step
elif mode != "none":
    raise SystemExit(f"unknown mode {mode}")
sys.exit(main(argv))
