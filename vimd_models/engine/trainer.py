"""The one training / evaluation loop for every task.

A run writes to <output_dir>/<name>/: config.yaml (resolved), checkpoint.safetensors (resumable
state, atomically replaced every ``train.ckpt_every`` steps and each epoch), summary.csv (one row
per epoch), curves.png, model.safetensors (final release weights; EMA weights when EMA is on) and
best.safetensors (best evaluation). Resuming restores model, optimiser, EMA, schedule position,
RNG state and the position inside the epoch, so it continues exactly.
"""
from __future__ import annotations

import contextlib
import copy
import os
import random
import signal
import time

import torch
import torch.distributed as dist
from torch import nn

from ..data import build_classification, build_sr, make_loader
from ..distill.tasks import Task, build_task
from .checkpoint import load_into, load_state, load_weights, save_state, save_weights
from .config import dump_config
from .errors import UserError
from .logging import write_curves, write_summary
from .metrics import psnr_y, ssim_y, topk_correct
from .optim import EMA, build_optimizer, lr_at, set_lr

STATE_FILE = "checkpoint.safetensors"


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str) -> bool:
    """torchrun sets WORLD_SIZE / RANK: join the group (gloo on CPU, nccl on CUDA). True when this
    call created the group (and so must destroy it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return True
    return False


def _device(cfg: dict) -> torch.device:
    dev = cfg["device"]
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"config 'device' = {dev} but no CUDA GPU is available")
        if dist.is_initialized():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    elif dev != "cpu":
        raise UserError(f"config 'device' must be cpu or cuda[:i], got {dev!r}")
    return torch.device(dev)


def _to(batch, device):
    return [b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch]


def build_data(cfg: dict, task_name: str | None = None):
    """(train dataset or None for data-free, [eval datasets], num_classes or None)."""
    t = task_name or cfg["task"]
    if t in ("sr", "dvmsr_kd"):
        return build_sr(cfg, "train")[0], build_sr(cfg, "val"), None
    views = {"vimd": ("hr_lr", "lr"), "dfkd": ("hr", "hr")}.get(t)
    if views is None:  # classify
        v = cfg["data"]["views"] if cfg["data"]["views"] != "hr_lr" else "hr"
        views = (v, v)
    val = build_classification(cfg, "val", views[1])
    train = None if t == "dfkd" else build_classification(cfg, "train", views[0])
    return train, [val], val.num_classes


@torch.no_grad()
def evaluate(model: nn.Module, kind: str, datasets, cfg: dict, device=None) -> dict:
    """Classification: top1/top5 (%) per dataset; SR: PSNR/SSIM (Y, border = scale) per dataset.
    The first dataset's metrics are also given without a prefix."""
    device = device or next(model.parameters()).device
    rank, world = dist_info()
    was = model.training
    model.eval()
    out = {}
    for i, ds in enumerate(datasets):
        bs = cfg["data"]["eval_batch_size"] if kind == "classify" else 1
        loader = make_loader(ds, bs, cfg["seed"], 0, train=False, num_workers=cfg["data"]["num_workers"],
                             rank=rank, world=world)
        sums = torch.zeros(3, dtype=torch.float64)
        for batch in loader:
            batch = _to(batch, device)
            if kind == "classify":
                x, y = batch
                c = topk_correct(model(x).float(), y)
                sums += torch.tensor([c["top1"], c["top5"], y.shape[0]], dtype=torch.float64)
            else:
                lr, hr = batch
                sr = model(lr).float()
                b = cfg["data"]["scale"]
                sums += torch.tensor([psnr_y(sr, hr, b).sum().item(), ssim_y(sr, hr, b).sum().item(), hr.shape[0]],
                                     dtype=torch.float64)
        if world > 1:
            dist.all_reduce(sums)
        n = max(1.0, sums[2].item())
        name = getattr(ds, "name", None) or f"set{i}"
        if kind == "classify":
            m = {"top1": 100 * sums[0].item() / n, "top5": 100 * sums[1].item() / n}
        else:
            m = {"psnr": sums[0].item() / n, "ssim": sums[1].item() / n}
        if i == 0:
            out.update(m)
        if len(datasets) > 1:
            out.update({f"{name}/{k}": v for k, v in m.items()})
    model.train(was)
    return out


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


def _eval_model(task: Task, ema: EMA | None) -> nn.Module:
    if ema is None:
        return task.model
    m = copy.deepcopy(task.model)
    m.load_state_dict(ema.shadow)
    return m


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def train(cfg: dict, resume: str | None = None) -> dict:
    """Train ``cfg`` (see engine.config); returns the summary of the last epoch and the run folder.
    Under torchrun every rank waits for rank 0's final writes, then leaves the process group: a rank
    that exits with the group's threads still running aborts ("terminate called without an active
    exception")."""
    owned = init_distributed(cfg["device"])
    try:
        res = _train(cfg, resume)
        if dist_info()[1] > 1:
            dist.barrier()
        return res
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: dict, resume: str | None) -> dict:
    rank, world = dist_info()
    device = _device(cfg)
    torch.manual_seed(cfg["seed"])
    random.seed(cfg["seed"])
    if cfg["deterministic"]:
        torch.use_deterministic_algorithms(True)
    run_dir = os.path.join(cfg["output_dir"], cfg["name"])
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        dump_config(cfg, os.path.join(run_dir, "config.yaml"))

    train_ds, eval_ds, num_classes = build_data(cfg)
    task = build_task(cfg, num_classes).to(device)
    if cfg["model"]["pretrained"]:
        load_into(task.model, load_weights(cfg["model"]["pretrained"]), cfg["model"]["pretrained"])
    opt = build_optimizer(task, cfg)
    ema = EMA(task.model, cfg["train"]["ema"]) if cfg["train"]["ema"] else None
    # identical weights on every rank above; from here each rank draws its own noise (dropout,
    # drop-path, the data-free generator's z)
    torch.manual_seed(cfg["seed"] + 1_000_003 * rank)
    t = cfg["train"]
    bs = cfg["data"]["batch_size"]
    if train_ds is None:
        if not t["steps_per_epoch"]:
            raise UserError("config 'train.steps_per_epoch' must be set for data-free training")
        steps_per_epoch = t["steps_per_epoch"]
    else:
        full = len(train_ds) // (bs * world)
        if full == 0:
            raise UserError(f"the training set ({len(train_ds)} images) is smaller than one batch "
                            f"({bs} x {world} processes); lower data.batch_size")
        steps_per_epoch = min(full, t["steps_per_epoch"] or full)
    total_steps = steps_per_epoch * t["epochs"]

    pos = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "sums": {}, "images": 0, "time": 0.0}
    history: list[dict] = []
    best = None
    state_path = os.path.join(run_dir, STATE_FILE)
    if resume:
        path = state_path if resume == "auto" else resume
        state, meta = load_state(path)
        for k in ("task", "model"):
            if meta.get(k) != (cfg["task"] if k == "task" else cfg["model"]["name"]):
                raise UserError(f"checkpoint {path} was written for {k} {meta.get(k)!r}, "
                                f"the config asks for {cfg['task'] if k == 'task' else cfg['model']['name']!r}")
        load_into(task, state["task"], path)
        try:
            opt.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise UserError(f"checkpoint {path}: optimizer state does not match ({e})") from None
        if ema is not None:
            if "ema" not in state:
                raise UserError(f"checkpoint {path} has no EMA state but train.ema is on")
            ema.load_state_dict(state["ema"])
        task.load_extra_state(state.get("extra", {}))
        pos, history, best = state["pos"], state["history"], state["best"]
        _set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])

    def save_checkpoint():
        rngs = [_rng_state()]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if rank == 0:
            state = {"task": task.state_dict(), "optimizer": opt.state_dict(), "pos": pos, "history": history,
                     "best": best, "rng": rngs, "extra": task.extra_state()}
            if ema is not None:
                state["ema"] = ema.state_dict()
            save_state(state_path, state, {"task": cfg["task"], "model": cfg["model"]["name"]})

    wrapped = task
    if world > 1 and task.ddp_ok:
        wrapped = nn.parallel.DistributedDataParallel(task, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in task.parameters() if p.requires_grad]
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if t["amp"] == "bf16" else contextlib.nullcontext()
    kind = task.kind
    summary = {}

    while pos["epoch"] < t["epochs"]:
        epoch = pos["epoch"]
        task.train()
        if train_ds is None:
            batches = ((None,) for _ in range(steps_per_epoch - pos["step_in_epoch"]))
        else:
            loader = make_loader(train_ds, bs, cfg["seed"], epoch, train=True, num_workers=cfg["data"]["num_workers"],
                                 rank=rank, world=world, start_batch=pos["step_in_epoch"])
            batches = (b for i, b in zip(range(steps_per_epoch - pos["step_in_epoch"]), loader))
        bar = None
        if rank == 0 and t["progress"]:
            from tqdm import tqdm
            bar = tqdm(total=steps_per_epoch, initial=pos["step_in_epoch"], desc=f"{cfg['name']} ep {epoch + 1}/{t['epochs']}",
                       leave=False, dynamic_ncols=True)
        tic = time.perf_counter()
        for batch in batches:
            batch = _to(batch, device)
            lr = lr_at(pos["global_step"], total_steps, steps_per_epoch, cfg)
            set_lr(opt, lr)
            opt.zero_grad(set_to_none=True)
            with amp:
                loss, comps = wrapped(batch)
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss is {loss.item()} at step {pos['global_step']} ({ {k: float(v) for k, v in comps.items()} })")
            loss.backward()
            if world > 1 and not task.ddp_ok:
                for p in params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad.div_(world)
            if cfg["optim"]["clip_grad"]:
                nn.utils.clip_grad_norm_(params, cfg["optim"]["clip_grad"])
            opt.step()
            if ema is not None:
                ema.update(task.model)
            n = task.batch_size(batch) * world
            pos["global_step"] += 1
            pos["step_in_epoch"] += 1
            pos["images"] += n
            sums = pos["sums"]
            for k, v in [("loss", loss.detach())] + list(comps.items()):
                s, c = sums.get(k, (0.0, 0))
                sums[k] = (s + float(v), c + 1)
            now = time.perf_counter()
            pos["time"] += now - tic
            tic = now
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{s / c:.4g}" for k, (s, c) in sums.items()} | {"img/s": f"{pos['images'] / max(pos['time'], 1e-9):.1f}"})
            if t["ckpt_every"] and pos["global_step"] % t["ckpt_every"] == 0 and pos["step_in_epoch"] < steps_per_epoch:
                save_checkpoint()
            if t["kill_after_step"] is not None and pos["global_step"] == t["kill_after_step"]:
                os.kill(os.getpid(), signal.SIGKILL)  # testing: die like a preempted job
        if bar is not None:
            bar.close()
        row = {"epoch": epoch + 1, "step": pos["global_step"], "lr": lr_at(pos["global_step"] - 1, total_steps, steps_per_epoch, cfg),
               "images_per_s": pos["images"] / max(pos["time"], 1e-9), "train_time_s": pos["time"]}
        row.update({f"train_{k}": s / c for k, (s, c) in pos["sums"].items()})
        if (epoch + 1) % t["eval_every"] == 0 or epoch + 1 == t["epochs"]:
            metrics = evaluate(_eval_model(task, ema), kind, eval_ds, cfg, device)
            row.update({f"val_{k}": v for k, v in metrics.items()})
            key = "val_top1" if kind == "classify" else "val_psnr"
            if best is None or row[key] > best[key]:
                best = dict(row)
                if rank == 0:
                    save_weights(os.path.join(run_dir, "best.safetensors"), _eval_model(task, ema).state_dict(),
                                 {"model": cfg["model"]["name"], "epoch": epoch + 1})
        history.append(row)
        pos.update(epoch=epoch + 1, step_in_epoch=0, sums={}, images=0, time=0.0)
        save_checkpoint()
        if rank == 0:
            write_summary(history, os.path.join(run_dir, "summary.csv"))
            write_curves(history, os.path.join(run_dir, "curves.png"), cfg["name"])
        summary = row

    final_model = _eval_model(task, ema)
    if rank == 0:
        save_weights(os.path.join(run_dir, "model.safetensors"), final_model.state_dict(),
                     {"model": cfg["model"]["name"], "task": cfg["task"]})
        if cfg["task"] == "classify" and t["record_norm_stats"]:
            _record_stats(final_model, train_ds, cfg, device, os.path.join(run_dir, "norm_stats.safetensors"))
    return {"run_dir": run_dir, "last": summary, "best": best, "params": count_params(task.model),
            "history": history}


def _record_stats(model: nn.Module, ds, cfg: dict, device, path: str, max_batches: int = 8) -> None:
    from ..distill.dfkd import record_norm_stats
    loader = make_loader(ds, cfg["data"]["batch_size"], cfg["seed"], 0, train=False)
    model.eval()
    xs = (b[0].to(device) for b, _ in zip(loader, range(max_batches)))
    try:
        stats = record_norm_stats(model, xs)
    except ValueError:
        return
    save_weights(path, stats, {"model": cfg["model"]["name"]})
