"""The one training loop for every task.

A run writes to <output_dir>/<name>/: config.yaml (resolved), run_info.json (device, kernel
backend, dtype, world size), checkpoint.safetensors (resumable state, atomically replaced every
``train.ckpt_every`` steps and at each summary row), summary.csv (one row per epoch, or per
``train.eval_every`` iterations when the run length is ``train.iterations``), curves.png,
model.safetensors (final release weights; EMA weights when EMA is on) and best.safetensors (best
evaluation). Resuming restores model, optimiser, EMA, schedule position, RNG state and the position
inside the epoch, so it continues exactly (also mid-schedule in iteration-counted runs); config values given on resume (optim.lr, ...) apply.

A loss that turns NaN / Inf on any process stops every process at that step with the same
one-line error naming the step, the process and the loss term; the last checkpoint (written before
that step) is kept, and the error says how to resume from it. The processes agree on this, and on
a stop request, through one all-reduce of two numbers per step.

SIGTERM or SIGUSR1 (what schedulers send before they preempt a job) lets every process finish its
step; the checkpoint is written and the run ends with ``Preempted`` (``vimd`` exits with 75), to be
continued with ``--resume``. A run restarted by torchrun (``--max-restarts``) or requeued by SLURM
resumes from its checkpoint by itself.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import json
import os
import random
import signal
import threading
import time
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import atomic_write, load_optimizer_state, load_state, save_state, save_weights
from ..data import make_loader
from ..data.check import MODES, check_data
from ..errors import Preempted, UserError
from ..tasks import RUN_END_HOOKS, average_gradients, task_class
from ..weights import load, load_into
from .config import dump_config
from .distributed import dist_info, init_distributed, resolve_device, to_device
from .kinds import KINDS, evaluate
from .logging import write_summary
from .optim import EMA, build_optimizer, lr_at, set_lr
from .plots import write_curves

STATE_FILE = "checkpoint.safetensors"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# set by torchrun in a restarted worker group, and by SLURM in a requeued job
RESTART_COUNTS = ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT")
DTYPES = {"none": "float32", "bf16": "bfloat16 autocast"}  # train.amp -> what the step computes in

StepCallback = Callable[["Trainer", int], None]


def _kernel_backend(cfg: dict, device: torch.device) -> str:
    """The kernel backend the models resolve for ``device`` (config 'backend', VIMD_BACKEND, auto)."""
    import vimd_kernels.registry as reg
    try:
        return reg.resolve(cfg["backend"], device)
    except (ValueError, RuntimeError) as e:
        raise UserError(f"config 'backend': {e}") from None


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": _jsonable(random.getstate())}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (list, tuple)) else x


def _tuple(x):
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(_tuple(st["python"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


class Trainer:
    """One run of ``cfg``: ``setup`` (on construction) builds the device, data, task, optimiser and
    EMA; ``fit`` optionally resumes, then trains epoch by epoch (``step`` per batch, ``epoch_end``
    per epoch; with ``train.iterations``, ``report`` every ``train.eval_every`` steps instead, the
    data epochs running on until the last iteration) and writes the final weights. Each ``on_step_end`` callback is called with
    (trainer, global step) after every step, once that step's checkpoint (if any) is written."""

    def __init__(self, cfg: dict, on_step_end: Sequence[StepCallback] = ()):
        self.cfg = cfg
        self.on_step_end = list(on_step_end)
        self.setup()

    # ---- construction -------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, t = self.cfg, self.cfg["train"]
        self.rank, self.world = dist_info()
        self.device = resolve_device(t["device"])
        self.info = {"device": str(self.device), "backend": _kernel_backend(cfg, self.device),
                     "dtype": DTYPES[t["amp"]], "world_size": self.world, "torch": torch.__version__}
        if self.device.type == "cuda":
            self.info["device_name"] = torch.cuda.get_device_name(self.device)
        torch.manual_seed(cfg["seed"])
        random.seed(cfg["seed"])
        if cfg["deterministic"]:
            torch.use_deterministic_algorithms(True)
        self.run_dir = os.path.join(cfg["output_dir"], cfg["name"])
        self.state_path = os.path.join(self.run_dir, STATE_FILE)
        if self.rank == 0:
            os.makedirs(self.run_dir, exist_ok=True)
            dump_config(cfg, os.path.join(self.run_dir, "config.yaml"))
            atomic_write(os.path.join(self.run_dir, "run_info.json"), json.dumps(self.info, indent=1).encode())
            print(f"run {self.run_dir}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.info.items()),
                  flush=True)

        self.task_cls = task_class(cfg["task"])
        self.kind = KINDS[self.task_cls.kind]
        self.train_ds, self.eval_ds, num_classes = self.kind.data(cfg, self.task_cls)
        if cfg["data"]["check"] is not False:
            lead = self.rank == 0
            check_data(self.train_ds, self.eval_ds, progress=lead and t["progress"], out=print if lead else None,
                       mode=MODES[cfg["data"]["check"]],
                       write_cache=lead)
        self.task = self.task_cls(cfg, num_classes).to(self.device)
        load(self.task.model, cfg["model"]["finetune"], finetune=True, what="config 'model.finetune'",
             opt_out="train from scratch with model.finetune=none", log=print if self.rank == 0 else None)
        load(self.task.model, cfg["model"]["pretrained"], what="config 'model.pretrained'")
        self.opt = build_optimizer(self.task, cfg)
        self.ema = EMA(self.task.model, t["ema"]) if t["ema"] else None
        # identical weights on every rank above; from here each rank draws its own noise (dropout,
        # drop-path, the data-free generator's z)
        torch.manual_seed(cfg["seed"] + 1_000_003 * self.rank)
        self.steps_per_epoch = self._steps_per_epoch()
        self.iterations = t["iterations"]
        self.total_steps = self.iterations or self.steps_per_epoch * t["epochs"]
        self.pos = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "sums": {}, "images": 0, "time": 0.0}
        self.history: list[dict] = []
        self.best: dict | None = None
        self.last: dict = {}
        self.saved_step: int | None = None  # global step of the checkpoint on disk from this run
        self.stop_signal: int | None = None  # a stop signal this process received
        self.stopping: int | None = None  # the signal every process agreed to stop on

    def _steps_per_epoch(self) -> int:
        t, bs = self.cfg["train"], self.cfg["data"]["batch_size"]
        if self.task_cls.data_free:
            if not t["steps_per_epoch"]:
                raise UserError("config 'train.steps_per_epoch' must be set for data-free training")
            return t["steps_per_epoch"]
        full = len(self.train_ds) // (bs * self.world)
        if full == 0:
            raise UserError(f"the training set ({len(self.train_ds)} images) is smaller than one batch "
                            f"({bs} x {self.world} processes); lower data.batch_size")
        return min(full, t["steps_per_epoch"] or full)

    # ---- checkpoints --------------------------------------------------------------------------
    def _meta(self) -> dict:
        return {"task": self.cfg["task"], "model": self.cfg["model"]["name"]}

    def resume(self, path: str) -> None:
        """Restore a training state written by ``save_checkpoint`` (``"auto"``: this run's)."""
        path = self.state_path if path == "auto" else path
        state, meta = load_state(path)
        for k, want in self._meta().items():
            if meta.get(k) != want:
                raise UserError(f"checkpoint {path} was written for {k} {meta.get(k)!r}, the config asks for {want!r}")
        load_into(self.task, state["task"], path)
        load_optimizer_state(self.opt, state["optimizer"], f"the optimizer state in checkpoint {path}")
        if self.ema is not None:
            if "ema" not in state:
                raise UserError(f"checkpoint {path} has no EMA state but train.ema is on")
            self.ema.load_state_dict(state["ema"])
        self.task.load_extra_state(state.get("extra", {}))
        self.pos, self.history, self.best = state["pos"], state["history"], state["best"]
        self.saved_step = self.pos["global_step"]
        self.last = self.history[-1] if self.history else {}
        rngs = state["rng"]
        _set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        if self.rank == 0:
            print(f"resumed from {path} at step {self.pos['global_step']}", flush=True)

    def save_checkpoint(self) -> None:
        """Write the training state; refuses (one error, the previous checkpoint kept) when a weight
        is no longer finite."""
        bad = next((n for n, p in self.task.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise self._diverged(f"weight {bad} is not finite after step {self.pos['global_step']}")
        rngs = [_rng_state()]
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if self.rank == 0:
            state = {"task": self.task.state_dict(), "optimizer": self.opt.state_dict(), "pos": self.pos,
                     "history": self.history, "best": self.best, "rng": rngs, "extra": self.task.extra_state()}
            if self.ema is not None:
                state["ema"] = self.ema.state_dict()
            try:
                save_state(self.state_path, state, self._meta())
            except OSError as e:  # disk full, quota, permissions: the previous checkpoint is untouched
                raise UserError(f"cannot write checkpoint {self.state_path} at step {self.pos['global_step']} "
                                f"({e.strerror or e}); {self._how_to_go_on()} once there is room") from None
        self.saved_step = self.pos["global_step"]

    def _how_to_go_on(self, extra: str = "") -> str:
        """How to continue from the last checkpoint (the resolved config.yaml in the run folder
        reproduces this run)."""
        config = os.path.join(self.run_dir, "config.yaml")
        if self.saved_step is None:
            return f"no checkpoint was written yet: run `vimd train {config}{extra}`"
        return f"the checkpoint of step {self.saved_step} is kept: run `vimd train {config} --resume{extra}`"

    def _diverged(self, what: str) -> UserError:
        """The error for a loss or weight that turned NaN / Inf."""
        lr = self.lr_at(self.pos["global_step"])
        how = self._how_to_go_on(f" optim.lr=<lower than {self.cfg['optim']['lr']:g}>")
        return UserError(f"training diverged: {what} (epoch {self.pos['epoch'] + 1}, lr {lr:.3g}); {how}")

    # ---- training -----------------------------------------------------------------------------
    def eval_model(self) -> nn.Module:
        """The model evaluated and released: a copy holding the EMA weights when EMA is on."""
        if self.ema is None:
            return self.task.model
        m = copy.deepcopy(self.task.model)
        m.load_state_dict(self.ema.shadow)
        return m

    def lr_at(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.steps_per_epoch, self.cfg)

    def _prepare(self) -> None:
        """DDP wrapper, trainable parameters and the autocast context for ``step``."""
        task, device = self.task, self.device
        self.wrapped = task
        if self.world > 1 and task.ddp_ok:
            self.wrapped = nn.parallel.DistributedDataParallel(
                task, device_ids=[device.index] if device.type == "cuda" else None)
        self.params = [p for p in task.parameters() if p.requires_grad]
        self.amp = (torch.autocast(device.type, dtype=torch.bfloat16) if self.cfg["train"]["amp"] == "bf16"
                    else contextlib.nullcontext())

    def _batches(self, epoch: int):
        """The rest of this epoch's batches (all of them unless resumed mid-epoch)."""
        left = self.steps_per_epoch - self.pos["step_in_epoch"]
        if self.task_cls.data_free:
            return ((None,) for _ in range(left))
        loader = make_loader(self.train_ds, self.cfg["data"]["batch_size"], self.cfg["seed"], epoch, train=True,
                             num_workers=self.cfg["data"]["num_workers"], rank=self.rank, world=self.world,
                             start_batch=self.pos["step_in_epoch"])
        return (b for _, b in zip(range(left), loader))

    def _progress(self, epoch: int):
        """The epoch's progress bar (rank 0, train.progress), cleared when the epoch ends or fails;
        over all iterations in an iteration-counted run."""
        from tqdm import tqdm
        if self.iterations:
            total, initial, desc = self.total_steps, self.pos["global_step"], f"it (ep {epoch + 1})"
        else:
            total, initial = self.steps_per_epoch, self.pos["step_in_epoch"]
            desc = f"ep {epoch + 1}/{self.cfg['train']['epochs']}"
        return tqdm(total=total, initial=initial, desc=f"{self.cfg['name']} {desc}", leave=False,
                    dynamic_ncols=True, disable=self.rank != 0 or not self.cfg["train"]["progress"])

    def step(self, batch) -> None:
        """One optimiser step on one batch; advances the position, loss sums and training time
        (measured from the end of the previous step, so it includes loading this batch)."""
        pos, opt, task = self.pos, self.opt, self.task
        batch = to_device(batch, self.device)
        set_lr(opt, self.lr_at(pos["global_step"]))
        opt.zero_grad(set_to_none=True)
        with self.amp:
            loss, comps = self.wrapped(batch)
        self._agree(loss, comps)
        loss.backward()
        if not task.ddp_ok:
            average_gradients(p.grad for p in self.params)
        if self.cfg["optim"]["clip_grad"]:
            nn.utils.clip_grad_norm_(self.params, self.cfg["optim"]["clip_grad"])
        opt.step()
        if self.ema is not None:
            self.ema.update(task.model)
        pos["global_step"] += 1
        pos["step_in_epoch"] += 1
        pos["images"] += task.batch_size(batch) * self.world
        sums = pos["sums"]
        for k, v in [("loss", loss.detach())] + list(comps.items()):
            s, c = sums.get(k, (0.0, 0))
            sums[k] = (s + float(v), c + 1)
        now = time.perf_counter()
        pos["time"] += now - self._tic
        self._tic = now

    def _agree(self, loss: torch.Tensor, comps: dict) -> None:
        """Before backward, every process learns whether any loss is not finite (then all raise the
        same error) and whether any process received a stop signal (then all stop after this step)."""
        bad = not bool(torch.isfinite(loss.detach()))
        flags = torch.tensor([float(bad), float(self.stop_signal or 0)])
        if self.world > 1:
            flags = flags.to(self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            flags = flags.cpu()
        if flags[0]:
            terms = ", ".join(f"'{k}' is {float(v)}" for k, v in comps.items()
                              if not torch.isfinite(torch.as_tensor(v))) or f"sum is {loss.item()}"
            where = [terms if bad else None]
            if self.world > 1:
                where = [None] * self.world
                dist.all_gather_object(where, terms if bad else None)
            what = "; ".join(f"{w} on process {r}" if self.world > 1 else w for r, w in enumerate(where) if w)
            raise self._diverged(f"loss term {what} at step {self.pos['global_step'] + 1}")
        if flags[1]:
            self.stopping = int(flags[1])

    def _stop(self) -> None:
        """After the step on which every process agreed to stop: the checkpoint, then Preempted."""
        if self.saved_step != self.pos["global_step"]:
            self.save_checkpoint()
        name = signal.Signals(self.stopping).name
        raise Preempted(f"stopped by {name} after step {self.pos['global_step']}; {self.state_path} holds it: "
                        f"run the same command with --resume to continue")

    def _finished(self) -> bool:
        if self.iterations:
            return self.pos["global_step"] >= self.total_steps
        return self.pos["epoch"] >= self.cfg["train"]["epochs"]

    def _after_step(self) -> None:
        """Iteration-counted runs: next data epoch once this one's batches are used, a summary row
        every ``eval_every`` steps and at the end; checkpoint every ``ckpt_every`` steps."""
        pos, t = self.pos, self.cfg["train"]
        step, every = pos["global_step"], t["ckpt_every"]
        if self.iterations:
            if pos["step_in_epoch"] == self.steps_per_epoch:
                pos.update(epoch=pos["epoch"] + 1, step_in_epoch=0)
            if step % t["eval_every"] == 0 or step == self.total_steps:
                self.report()
            elif every and step % every == 0:
                self.save_checkpoint()
        elif every and step % every == 0 and pos["step_in_epoch"] < self.steps_per_epoch:
            self.save_checkpoint()

    def train_epoch(self) -> None:
        pos = self.pos
        epoch = pos["epoch"]
        self.task.train()
        batches = self._batches(epoch)
        self._tic = time.perf_counter()
        with self._progress(epoch) as progress:
            for batch in batches:
                self.step(batch)
                if not progress.disable:
                    progress.update(1)
                    progress.set_postfix({k: f"{s / c:.4g}" for k, (s, c) in pos["sums"].items()}
                                         | {"img/s": f"{pos['images'] / max(pos['time'], 1e-9):.1f}"})
                self._after_step()
                for cb in self.on_step_end:
                    cb(self, pos["global_step"])
                if self.stopping:
                    self._stop()
                if self._finished():
                    break
        if not self.iterations:
            self.epoch_end(epoch)

    def epoch_end(self, epoch: int) -> dict:
        """The summary row of an epoch-counted run's epoch (see ``report``); next epoch."""
        t = self.cfg["train"]
        return self.report(with_eval=(epoch + 1) % t["eval_every"] == 0 or epoch + 1 == t["epochs"])

    def report(self, with_eval: bool = True) -> dict:
        """Summary row (evaluation when asked, best.safetensors on a new best), checkpoint,
        summary.csv and curves.png. Its ``epoch`` is the epoch just ended, or in an
        iteration-counted run the data epochs done (fractional)."""
        cfg, pos = self.cfg, self.pos
        label = round(pos["global_step"] / self.steps_per_epoch, 4) if self.iterations else pos["epoch"] + 1
        row = {"epoch": label, "step": pos["global_step"], "lr": self.lr_at(pos["global_step"] - 1),
               "images_per_s": pos["images"] / max(pos["time"], 1e-9), "train_time_s": pos["time"]}
        row.update({f"train_{k}": s / c for k, (s, c) in pos["sums"].items()})
        if with_eval:
            model = self.eval_model()
            metrics = evaluate(model, self.task_cls.kind, self.eval_ds, cfg, self.device)
            row.update({f"val_{k}": v for k, v in metrics.items()})
            key = self.kind.best_key
            if self.best is None or row[key] > self.best[key]:
                self.best = dict(row)
                if self.rank == 0:
                    save_weights(os.path.join(self.run_dir, "best.safetensors"), model.state_dict(),
                                 {"model": cfg["model"]["name"], "epoch": label, "step": pos["global_step"]})
        self.history.append(row)
        pos.update(sums={}, images=0, time=0.0)
        if not self.iterations:
            pos.update(epoch=label, step_in_epoch=0)
        self.save_checkpoint()
        if self.rank == 0:
            write_summary(self.history, os.path.join(self.run_dir, "summary.csv"))
            write_curves(self.history, os.path.join(self.run_dir, "curves.png"), cfg["name"])
        self.last = row
        self._tic = time.perf_counter()  # evaluation and writing are not training time
        return row

    def fit(self, resume: str | None = None) -> dict:
        """Train the remaining epochs or iterations (after ``resume(resume)`` when given); returns the
        last summary row, the best one, the run folder, the parameter count and the history."""
        if resume is None and any(int(os.environ.get(k, "0") or 0) > 0 for k in RESTART_COUNTS) \
                and os.path.isfile(self.state_path):
            resume = "auto"  # a restarted or requeued job continues its run
        if resume:
            self.resume(resume)
        self._prepare()
        with self._stop_signals():
            failed = None
            try:
                while not self._finished():
                    self.train_epoch()
            except (RuntimeError, ConnectionError, EOFError) as e:
                failed = self._loader_failure(e)
                if failed is None:
                    raise
                # leaving this block frees the loader, which reaps the dead worker: torch's SIGCHLD
                # handler would raise again meanwhile, so it is off until the loader is gone
                previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            if failed is not None:
                try:
                    gc.collect()
                finally:
                    signal.signal(signal.SIGCHLD, previous)
                raise failed
        self.finish()
        return {"run_dir": self.run_dir, "last": self.last, "best": self.best, "params": count_params(self.task.model),
                "history": self.history}

    def _loader_failure(self, e: BaseException) -> UserError | None:
        """The error for a data-loader worker that died, or None when ``e`` is something else. A
        dead worker surfaces as torch's RuntimeError (raised wherever the main process is), or as a
        broken connection while a batch it had sent is received."""
        if isinstance(e, RuntimeError):
            if "DataLoader worker" not in str(e):
                return None
            why = str(e).splitlines()[0].rstrip(". ")
        elif self.cfg["data"]["num_workers"] > 0:
            why = f"{type(e).__name__}: {e}"
        else:
            return None
        return UserError(f"a data-loader worker stopped at step {self.pos['global_step'] + 1} ({why}); "
                         f"{self._how_to_go_on()}")

    @contextlib.contextmanager
    def _stop_signals(self):
        """SIGTERM / SIGUSR1 set ``stop_signal`` while training (main thread only: elsewhere signal
        handlers cannot be installed, and the default actions stay)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum, frame):
            self.stop_signal = signum
        previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def finish(self) -> None:
        """model.safetensors, then the tasks' run-end hooks (first process only)."""
        cfg = self.cfg
        final = self.eval_model()
        if self.rank != 0:
            return
        save_weights(os.path.join(self.run_dir, "model.safetensors"), final.state_dict(),
                     {"model": cfg["model"]["name"], "task": cfg["task"]})
        for hook in RUN_END_HOOKS:
            hook(self.task, final, self.run_dir, self._inputs)

    def _inputs(self):
        """The training inputs in a fixed order, on the device (for the run-end hooks)."""
        loader = make_loader(self.train_ds, self.cfg["data"]["batch_size"], self.cfg["seed"], 0, train=False)
        return (b[0].to(self.device) for b in loader)


def train(cfg: dict, resume: str | None = None, on_step_end: Sequence[StepCallback] = ()) -> dict:
    """Train ``cfg`` (see engine.config); returns the summary of the last epoch and the run folder.
    Under torchrun every rank waits for rank 0's final writes, then leaves the process group: a rank
    that exits with the group's threads still running aborts ("terminate called without an active
    exception")."""
    owned = init_distributed(cfg["train"]["device"])
    try:
        res = Trainer(cfg, on_step_end).fit(resume)
        if dist_info()[1] > 1:
            dist.barrier()
        return res
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
