"""``vimd sr`` and ``vimd predict``: a trained model applied to image files.

    vimd sr --weights runs/dvmsr_div2k/model.safetensors --config dvmsr_div2k a.png b.png -o out/
    vimd sr --weights SRResNet_x4-ImageNet-6dd5216c.pth.tar --model srresnet_x4 a.png -o out/
    vimd predict --weights runs/hrvm_cub/best.safetensors --config hrvm_cub bird.jpg

``sr`` writes ``OUT/<name>_x<scale>.png``. It runs the model on overlapping LR tiles (``--tile``
pixels, ``--overlap`` shared between neighbours) and blends them, so the memory it needs is set
by the tile, not the image. In each overlap the outer quarter of either tile is discarded and the
middle half cross-fades linearly, so a convolutional model (SRResNet) gives the untiled output
exactly once a quarter of the overlap covers its receptive field; DVMSR's scans see the whole
tile, so there tiling changes the output slightly (see ``DEFAULT_OVERLAP``).
``predict`` prints the top-k classes of each image, named from the config's dataset when its
folder is readable, else by index. Both run on a GPU when one is available (``--device``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_TILE = 256
# Measured with DVMSR micro trained by the demo (demo_sr, val PSNR 24.53 dB) on a 512x384 LR image
# of the synthetic data, 256-pixel tiles, PSNR of the tiled output against the untiled one:
# overlap 0: 44.2 dB (seams, max error 0.31), 8: 66.7 dB, 16: 67.9 dB, 32: 68.1 dB, 64: 68.3 dB
# (max error 0.025 from 8 on: what remains is the scans' context beyond the tile). 32 is where the
# gain has levelled off and its discarded quarter (8 pixels) covers the convolutions around full
# DVMSR's scans (7 pixels); on large images it costs (256 / 224)^2 = 1.3x the untiled compute.
DEFAULT_OVERLAP = 32


# ----------------------------------------------------------------------------- tiled SR

def _starts(n: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis of length n: every ``tile - overlap``, the last flush with the end."""
    if n <= tile:
        return [0]
    return list(range(0, n - tile, tile - overlap)) + [n - tile]


def _ramp(length: int, lo_shared: bool, hi_shared: bool, overlap: int, scale: int) -> torch.Tensor:
    """Blend weights along one axis of a tile's output: on a side shared with a neighbour, 0 over
    the outer quarter of the overlap, a linear rise over the middle half, 1 inside."""
    import torch
    margin, ramp = (overlap // 4) * scale, (overlap - 2 * (overlap // 4)) * scale
    d = torch.arange(length, dtype=torch.float32)
    rise = ((d - margin + 0.5) / ramp).clamp(0, 1) if ramp > 0 else torch.ones(length)
    w = torch.ones(length)
    if lo_shared:
        w = w * rise
    if hi_shared:
        w = w * rise.flip(0)
    return w


def super_resolve(model: nn.Module, lr: torch.Tensor, tile: int | None = DEFAULT_TILE,
                  overlap: int = DEFAULT_OVERLAP) -> torch.Tensor:
    """lr (1, C, H, W) in [0, 1] on the model's device -> SR (1, C, H*s, W*s) on the CPU, clamped to
    [0, 1]; tiled when the image is larger than ``tile`` (None or 0: one pass)."""
    import torch
    s = model.upscale
    _, c, h, w = lr.shape
    if not tile or (h <= tile and w <= tile):
        return model(lr).float().clamp(0, 1).cpu()
    if not 0 <= overlap < tile:
        raise UserError(f"--overlap must be >= 0 and smaller than --tile ({tile}), got {overlap}")
    out = torch.zeros(1, c, h * s, w * s)
    weight = torch.zeros(1, 1, h * s, w * s)
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    for y in ys:
        for x in xs:
            th, tw = min(tile, h), min(tile, w)
            sr = model(lr[:, :, y:y + th, x:x + tw]).float().cpu()
            wy = _ramp(th * s, y > 0, y + th < h, overlap, s)
            wx = _ramp(tw * s, x > 0, x + tw < w, overlap, s)
            wt = wy[:, None] * wx[None, :]
            out[:, :, y * s:(y + th) * s, x * s:(x + tw) * s] += sr * wt
            weight[:, :, y * s:(y + th) * s, x * s:(x + tw) * s] += wt
    return (out / weight).clamp(0, 1)


# ----------------------------------------------------------------------------- shared helpers

def _device(spec: str) -> torch.device:
    from .engine.distributed import parse_device
    return parse_device(spec, "--device")


def _read_weights(model: nn.Module, path: str) -> dict:
    """The weights file's state dict under our names (official release names converted)."""
    import pickle

    from .convert import our_names, read_checkpoint
    if not os.path.isfile(path):
        raise UserError(f"weights file not found: {path}")
    try:
        return our_names(model, read_checkpoint(path))
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as e:
        raise UserError(f"cannot read weights {path}: {str(e).splitlines()[0]}") from None


def _load(model: nn.Module, sd: dict, path: str) -> None:
    from .convert import load_checkpoint
    try:
        load_checkpoint(model, sd)
    except ValueError as e:
        raise UserError(f"weights {path} do not fit the model: {'; '.join(str(e).splitlines()[1:])}") from None


def _config(name_or_path: str, backend: str | None) -> dict:
    from .engine.config import load_config
    return load_config(name_or_path, [] if backend is None else [f"backend={backend}"])


def _from_config(cfg: dict, **extra) -> nn.Module:
    from .distill.tasks import create
    return create(cfg["model"], cfg, "model", **extra)


def _images(paths: list[str], desc: str):
    """A progress bar over ``paths``, after checking that each file opens as an image (its header),
    so a bad file stops the command before any work, with one line naming it."""
    from PIL import Image
    from tqdm import tqdm
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"image not found: {path}")
        try:
            with Image.open(path):
                pass
        except Exception as e:  # PIL raises many types for unknown / damaged files
            raise UserError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
    return tqdm(paths, desc=desc, unit="img", file=sys.stderr, disable=len(paths) < 2)


# ----------------------------------------------------------------------------- commands

def cmd_sr(a: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from .data.transforms import load_image
    if a.config:
        model = _from_config(_config(a.config, a.backend))
    else:
        from .registry import create_model
        try:
            model = create_model(a.model, backend=a.backend)
        except (ValueError, TypeError) as e:
            raise UserError(str(e)) from None
    if not hasattr(model, "upscale") or getattr(model, "num_classes", None) is not None:
        raise UserError(f"{type(model).__name__} is not a super-resolution model (use vimd predict)")
    _load(model, _read_weights(model, a.weights), a.weights)
    device = _device(a.device)
    model.to(device).eval()
    os.makedirs(a.out, exist_ok=True)
    for path in _images(a.images, "sr"):
        lr = load_image(path)[None].to(device)
        with torch.inference_mode():
            sr = super_resolve(model, lr, a.tile, a.overlap)
        name = f"{os.path.splitext(os.path.basename(path))[0]}_x{model.upscale}.png"
        pixels = sr[0].mul(255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(os.path.join(a.out, name))
        print(f"{path} -> {os.path.join(a.out, name)} ({lr.shape[-1]}x{lr.shape[-2]} -> "
              f"{sr.shape[-1]}x{sr.shape[-2]})")
    return 0


def class_names(cfg: dict, n: int) -> list[str] | None:
    """The config's dataset class names when its folder is readable and they number ``n``."""
    from .data.folders import READERS
    d = cfg["data"]
    if d["dataset"] not in READERS or not d["root"]:
        return None
    try:
        _, classes = READERS[d["dataset"]](d["root"], "val")
    except (UserError, OSError, ValueError):
        return None
    return list(classes) if len(classes) == n else None


def cmd_predict(a: argparse.Namespace) -> int:
    import torch

    from .data.transforms import LowResProtocol, load_image
    from .distill.tasks import task_class
    cfg = _config(a.config, a.backend)
    task = task_class(cfg["task"])
    if task.kind != "classify":
        raise UserError(f"config {a.config} trains a {task.kind} model (use vimd sr)")
    model = _from_config(cfg)
    sd = _read_weights(model, a.weights)
    weight = getattr(model.get_classifier(), "weight", None) if getattr(model, "classifier_name", None) else None
    head = next((n for n, p in model.named_parameters() if p is weight), None)
    if head is None or head not in sd:
        raise UserError(f"weights {a.weights} hold no classifier for {cfg['model']['name']}")
    n = sd[head].shape[0]
    if n != model.num_classes:
        model.reset_classifier(n)
    _load(model, sd, a.weights)
    device = _device(a.device)
    model.to(device).eval()
    names = class_names(cfg, n) or [str(i) for i in range(n)]
    d = cfg["data"]
    view = task.views(cfg)[1]
    protocol = LowResProtocol(d["img_size"], d["lr_size"], train=False)
    k = min(a.topk, n)
    for path in _images(a.images, "predict"):
        hr, lr = protocol(load_image(path), torch.Generator())
        x = (lr if view == "lr" else hr)[None].to(device)
        with torch.inference_mode():
            prob, idx = model(x).float().softmax(-1)[0].topk(k)
        print(path)
        for p, i in zip(prob.tolist(), idx.tolist()):
            print(f"  {p:7.2%}  {names[i]} ({i})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The ``sr`` and ``predict`` subcommands of ``vimd``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    common.add_argument("--weights", required=True,
                        help="model .safetensors, a training checkpoint, or an official release file")
    common.add_argument("--device", default="auto", help="auto (a GPU when available) | cpu | cuda | cuda:<i>")
    common.add_argument("--backend", default=None, help="kernel backend (default: the best available)")
    s = sub.add_parser("sr", parents=[common], help="super-resolve image files (tiled)")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="the training config (name of a packaged one, or a YAML file)")
    which.add_argument("--model", help="a registered SR model name, e.g. dvmsr or srresnet_x4")
    s.add_argument("-o", "--out", required=True, help="output folder")
    s.add_argument("--tile", type=int, default=DEFAULT_TILE, help="LR tile size in pixels (0: whole image)")
    s.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="LR pixels shared by neighbouring tiles")
    s.set_defaults(func=cmd_sr)
    p = sub.add_parser("predict", parents=[common], help="top-k classes of image files")
    p.add_argument("--config", required=True, help="the training config (name of a packaged one, or a YAML file)")
    p.add_argument("--topk", type=int, default=5)
    p.set_defaults(func=cmd_predict)
