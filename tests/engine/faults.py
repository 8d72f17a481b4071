"""``vimd train`` with a fault injected, alone or under torchrun:

    python -m tests.engine.faults FAULT STEP CONFIG [key.sub=value ...] [--resume]

FAULT: ``SIGTERM`` / ``SIGUSR1``: process 0 sends itself the signal after global step STEP (as a
scheduler does before preempting); ``group-SIGUSR1``: to its whole process group (its data-loader
workers included: start it in a session of its own); ``nan``: process 1's loss is NaN at step STEP (task
``classify_nan``, registered here; pass ``task=classify_nan``); ``kill``: process 1 SIGKILLs
itself after step STEP, in the first attempt of a torchrun worker group only; ``kill-worker``:
SIGKILL to process 0's data-loader workers after step STEP; ``disk-full``: after step STEP,
process 0 can write no file larger than 4 KiB (RLIMIT_FSIZE: writes past it fail with EFBIG).
"""
import functools
import multiprocessing
import os
import resource
import signal
import sys

import torch

import vimd_models.engine.trainer as trainer
from vimd_models.cli import main
from vimd_models.tasks import register_task
from vimd_models.tasks.supervised import ClassifyTask


@register_task("classify_nan")
class ClassifyNaN(ClassifyTask):
    step_at = 0

    def forward(self, batch):
        loss, comps = super().forward(batch)
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == self.step_at and int(os.environ.get("RANK", "0")) == 1:
            loss = loss * float("nan")
            comps = {"ce": loss.detach()}
        return loss, comps


def after(step: int, fault: str):
    rank = int(os.environ.get("RANK", "0"))
    first = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0

    def on_step_end(tr, global_step: int) -> None:
        if global_step != step:
            return
        if fault in ("SIGTERM", "SIGUSR1") and rank == 0:
            os.kill(os.getpid(), getattr(signal, fault))
        if fault == "group-SIGUSR1" and rank == 0:
            os.killpg(os.getpgid(0), signal.SIGUSR1)
        if fault == "kill" and rank == 1 and first:
            os.kill(os.getpid(), signal.SIGKILL)
        if fault == "kill-worker" and rank == 0:
            for worker in multiprocessing.active_children():
                os.kill(worker.pid, signal.SIGKILL)
        if fault == "disk-full" and rank == 0:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return on_step_end


if __name__ == "__main__":
    torch.set_num_threads(1)
    fault, step, config, *rest = sys.argv[1:]
    ClassifyNaN.step_at = int(step)
    train = trainer.train
    trainer.train = functools.partial(train, on_step_end=[after(int(step), fault)])
    sys.exit(main(["train", config, *rest]))
