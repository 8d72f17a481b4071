"""``vimd train`` in-process, killed with SIGKILL after a given global step like a preempted job
(through the trainer's ``on_step_end`` callbacks):

    python -m tests.engine.killed_run STEP CONFIG [key.sub=value ...] [--resume]
"""
import os
import signal
import sys

from vimd_models.engine.config import load_config
from vimd_models.engine.trainer import train


def kill_after(step: int):
    def on_step_end(trainer, global_step: int) -> None:
        if global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return on_step_end


if __name__ == "__main__":
    step, config, *overrides = sys.argv[1:]
    resume = "auto" if "--resume" in overrides else None
    overrides = [o for o in overrides if o != "--resume"]
    train(load_config(config, overrides), resume=resume, on_step_end=[kill_after(int(step))])
