"""``vimd sr`` and ``vimd predict``: a trained model applied to image files.

    vimd sr --weights runs/dvmsr_div2k/model.safetensors --config dvmsr_div2k a.png b.png -o out/
    vimd sr --weights SRResNet_x4-ImageNet-6dd5216c.pth.tar --model srresnet_x4 a.png -o out/
    vimd predict --weights runs/hrvm_cub/best.safetensors --config hrvm_cub bird.jpg

``sr`` writes ``OUT/<name>_x<scale>.png``, tiled (``--tile``, ``--overlap``; see
vimd_models.infer). ``predict`` prints the top-k classes of each image, named from the config's
dataset when its folder is readable, else by index. Both run on a GPU when one is available
(``--device``).
"""
from __future__ import annotations

import os
import sys

from ..errors import UserError
from ..infer import DEFAULT_OVERLAP, DEFAULT_TILE
from . import command


def _common_args(p) -> None:
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--weights", required=True,
                   help="model .safetensors, a training checkpoint, or an official release file")
    p.add_argument("--device", default="auto", help="auto (a GPU when available) | cpu | cuda | cuda:<i>")
    p.add_argument("--backend", default=None, help="kernel backend (default: the best available)")


def _device(spec: str):
    from ..engine.distributed import parse_device
    return parse_device(spec, "--device")


def _config(name_or_path: str, backend: str | None) -> dict:
    from ..engine.config import load_config
    return load_config(name_or_path, [] if backend is None else [f"backend={backend}"])


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


def _sr_args(p) -> None:
    _common_args(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="the training config (name of a packaged one, or a YAML file)")
    which.add_argument("--model", help="a registered SR model name, e.g. dvmsr or srresnet_x4")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE, help="LR tile size in pixels (0: whole image)")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="LR pixels shared by neighbouring tiles")


@command("sr", "super-resolve image files (tiled)", _sr_args)
def sr(a) -> int:
    import torch
    from PIL import Image

    from ..data.transforms import load_image
    from ..infer import super_resolve
    from ..tasks import model_from_config
    from ..weights import load
    if a.config:
        model = model_from_config(_config(a.config, a.backend))
    else:
        from ..factory import create_model
        try:
            model = create_model(a.model, backend=a.backend)
        except (ValueError, TypeError) as e:
            raise UserError(str(e)) from None
    if not hasattr(model, "upscale") or getattr(model, "num_classes", None) is not None:
        raise UserError(f"{type(model).__name__} is not a super-resolution model (use vimd predict)")
    load(model, a.weights, what="--weights")
    device = _device(a.device)
    model.to(device).eval()
    os.makedirs(a.out, exist_ok=True)
    for path in _images(a.images, "sr"):
        lr = load_image(path)[None].to(device)
        with torch.inference_mode():
            out = super_resolve(model, lr, a.tile, a.overlap)
        name = f"{os.path.splitext(os.path.basename(path))[0]}_x{model.upscale}.png"
        pixels = out[0].mul(255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(os.path.join(a.out, name))
        print(f"{path} -> {os.path.join(a.out, name)} ({lr.shape[-1]}x{lr.shape[-2]} -> "
              f"{out.shape[-1]}x{out.shape[-2]})")
    return 0


def _predict_args(p) -> None:
    _common_args(p)
    p.add_argument("--config", required=True, help="the training config (name of a packaged one, or a YAML file)")
    p.add_argument("--topk", type=int, default=5)


@command("predict", "top-k classes of image files", _predict_args)
def predict(a) -> int:
    import torch

    from ..data.transforms import LowResProtocol, load_image
    from ..infer import class_names
    from ..tasks import model_from_config, task_class
    from ..weights import load, read
    cfg = _config(a.config, a.backend)
    task = task_class(cfg["task"])
    if task.kind != "classify":
        raise UserError(f"config {a.config} trains a {task.kind} model (use vimd sr)")
    model = model_from_config(cfg)
    sd = read(model, a.weights, "--weights")
    weight = getattr(model.get_classifier(), "weight", None) if getattr(model, "classifier_name", None) else None
    head = next((n for n, p in model.named_parameters() if p is weight), None)
    if head is None or head not in sd:
        raise UserError(f"--weights: {a.weights} holds no classifier for {cfg['model']['name']}")
    n = sd[head].shape[0]
    if n != model.num_classes:
        model.reset_classifier(n)
    load(model, sd, what=f"--weights {a.weights}")
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
