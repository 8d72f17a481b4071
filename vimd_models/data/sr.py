"""Super-resolution data: HR image folders (DIV2K-style) paired with an LR folder, or with LR made
like MATLAB's ``imresize(hr, 1/scale, 'bicubic')`` (antialiased cubic, a = -0.5, symmetric edges;
the same as BasicSR's ``imresize``) rounded to 8 bits; and the standard test sets in the layouts they
are distributed in (``resolve_sr_folder``).

Images are kept as decoded uint8 tensors: with ``cache="memory"`` every pair is decoded once (HR
mod-cropped to the scale, LR read or made) and training patches are cut from memory, instead of a
whole PNG decode (and LR resize) per patch. Under torch.distributed the processes of a node share
one copy: the first decodes into a file in shared memory (``/dev/shm``), every process maps it, and
the file is unlinked once all have (the memory is freed when the last process ends).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.distributed as dist

from ..errors import UserError
from .folders import IMG_EXT
from .transforms import read_rgb

CACHES = ("none", "memory")  # data.cache


def list_images(folder: str, what: str = "HR") -> list[str]:
    if not os.path.isdir(folder):
        raise UserError(f"{what} image folder not found: {folder}")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMG_EXT))
    if not files:
        raise UserError(f"no images ({', '.join(IMG_EXT)}) in {what} folder {folder}")
    return files


# ---- MATLAB imresize (bicubic) ------------------------------------------------------------------
def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    a = x.abs()
    a2, a3 = a * a, a * a * a
    return ((1.5 * a3 - 2.5 * a2 + 1) * (a <= 1)
            + (-0.5 * a3 + 2.5 * a2 - 4 * a + 2) * ((a > 1) & (a <= 2))).to(x.dtype)


def _contributions(n_in: int, n_out: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, indices), each (n_out, taps): MATLAB's ``contributions``; when shrinking the kernel
    is stretched by 1/scale (antialiasing); indices past an edge mirror back (symmetric padding)."""
    width = 4.0 / scale if scale < 1 else 4.0
    x = torch.arange(1, n_out + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w = w / w.sum(1, keepdim=True)
    keep = w.abs().sum(0) > 0  # MATLAB drops all-zero columns
    return w[:, keep], idx.long()[:, keep] - 1  # 0-based, past the edges where the kernel reaches


def _mirror(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices past an edge reflect back, the edge pixel repeated (symmetric padding)."""
    i = torch.where(i < 0, -i - 1, i)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def _resize_rows(x: torch.Tensor, n_out: int, scale: float) -> torch.Tensor:
    """Resize along the height of (C, H, W): per tap, one ``index_select`` of whole rows, weighted
    and accumulated (no (C, n_out, taps, W) intermediate)."""
    w, i = _contributions(x.shape[-2], n_out, scale)
    i = _mirror(i, x.shape[-2])
    out = torch.zeros(*x.shape[:-2], n_out, x.shape[-1], dtype=x.dtype)
    for p in range(i.shape[1]):
        out.addcmul_(x.index_select(-2, i[:, p]), w[:, p, None])
    return out


def imresize(img: torch.Tensor, scale: float) -> torch.Tensor:
    """MATLAB ``imresize(img, scale, 'bicubic')`` of a (C, H, W) image in float64 (no rounding):
    height first, then width; output size ceil(H * scale) x ceil(W * scale)."""
    h, w = img.shape[-2:]
    x = _resize_rows(img.double().contiguous(), math.ceil(h * scale), scale)
    x = _resize_rows(x.transpose(-1, -2).contiguous(), math.ceil(w * scale), scale)
    return x.transpose(-1, -2).contiguous()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 255] floats -> uint8, rounded half away from zero and saturated (MATLAB's im2uint8)."""
    return torch.floor(x.clamp(0, 255) + 0.5).to(torch.uint8)


def make_lr(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """LR of a uint8 (C, H, W) HR image (H, W multiples of ``scale``): MATLAB bicubic, uint8."""
    return to_uint8(imresize(hr.double(), 1 / scale))


def mod_crop(img: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    return img[:, : h - h % scale, : w - w % scale]


def _chw(arr) -> torch.Tensor:
    return torch.from_numpy(arr).permute(2, 0, 1)


def to_float(img: torch.Tensor) -> torch.Tensor:
    return img.float().div_(255.0) if img.dtype == torch.uint8 else img


# ---- folder layouts -----------------------------------------------------------------------------
# (HR folder, LR folder) inside a test set's folder, for scale s: the benchmark packages (Set5, Set14,
# B100, Urban100, Manga109: HR/ + LR_bicubic/X4/ with names 'babyx4.png') and BasicSR's
# (GTmod12/ + LRbicx4/, same names as the HR)
SET_LAYOUTS = (("HR", "LR_bicubic/X{s}"), ("GTmod12", "LRbicx{s}"))
# an HR folder '<prefix>_HR' with its LR next to it: DIV2K_valid_HR + DIV2K_valid_LR_bicubic/X4 ('0801x4.png')
SIBLING_LR = ("{prefix}_LR_bicubic/X{s}", "{prefix}_LR_bicubic_X{s}")


def resolve_sr_folder(path: str, scale: int) -> tuple[str, str | None, str]:
    """(HR folder, LR folder or None when LR must be made, set name) of an SR folder given as a
    test set's folder in one of SET_LAYOUTS, an HR folder with a sibling LR folder (SIBLING_LR),
    or a plain folder of HR images."""
    path = os.path.normpath(path)
    if not os.path.isdir(path):
        raise UserError(f"SR image folder not found: {path}")
    name = os.path.basename(path)
    for hr, lr in SET_LAYOUTS:
        hr_dir = os.path.join(path, hr)
        if os.path.isdir(hr_dir):
            lr_dir = os.path.join(path, lr.format(s=scale))
            return hr_dir, lr_dir if os.path.isdir(lr_dir) else None, name
    if name.endswith("_HR"):
        prefix = os.path.join(os.path.dirname(path), name[:-3])
        for lr in SIBLING_LR:
            lr_dir = lr.format(prefix=prefix, s=scale)
            if os.path.isdir(lr_dir):
                return path, lr_dir, name[:-3]
    return path, None, name


def _lr_match(hr_path: str, lr_files: dict[str, str], scale: int) -> str:
    """DIV2K and the benchmark sets name LR files '0001x4.png' for HR '0001.png'; BasicSR keeps the
    HR name."""
    stem = os.path.splitext(os.path.basename(hr_path))[0]
    for key in (f"{stem}x{scale}", stem):
        if key in lr_files:
            return lr_files[key]
    raise UserError(f"no LR image for {hr_path} in the LR folder (looked for {stem}x{scale}.* and {stem}.*)")


class SRPairs:
    """``get(i)`` -> (hr (3, H, W), lr (3, H/scale, W/scale)) floats in [0, 1]; ``get_u8`` the same as
    uint8. HR is mod-cropped to the scale; LR read from ``lr_dir`` or made (``make_lr``).
    ``cache="memory"``: ``preload`` decodes every pair once and later reads come from memory."""

    def __init__(self, hr_dir: str, scale: int, lr_dir: str | None = None, name: str | None = None,
                 cache: str = "none"):
        if cache not in CACHES:
            raise UserError(f"config 'data.cache' must be one of {', '.join(CACHES)}, got {cache!r}")
        self.hr_files = list_images(hr_dir, "HR")
        self.scale, self.name, self.cache = scale, name or os.path.basename(os.path.normpath(hr_dir)), cache
        self.where = hr_dir if lr_dir is None else f"{hr_dir} (LR: {lr_dir})"
        self.lr_files = None
        if lr_dir is not None:
            lrs = list_images(lr_dir, "LR")
            by_stem = {os.path.splitext(os.path.basename(p))[0]: p for p in lrs}
            self.lr_files = [_lr_match(p, by_stem, scale) for p in self.hr_files]
        self._mem: list | None = None

    @classmethod
    def from_folder(cls, path: str, scale: int, cache: str = "none") -> "SRPairs":
        """A test set or HR folder in any layout ``resolve_sr_folder`` knows."""
        hr, lr, name = resolve_sr_folder(path, scale)
        return cls(hr, scale, lr, name, cache)

    def __len__(self) -> int:
        return len(self.hr_files)

    def file_groups(self) -> list[tuple[str, str]]:
        """(path, "HR" or "LR") of every image file (data.check)."""
        return [(p, "HR") for p in self.hr_files] + [(p, "LR") for p in self.lr_files or []]

    def _decode(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr = mod_crop(_chw(read_rgb(self.hr_files[index])), self.scale).contiguous()
        if self.lr_files is None:
            return hr, make_lr(hr, self.scale)
        lr = _chw(read_rgb(self.lr_files[index])).contiguous()
        if tuple(lr.shape[-2:]) != (hr.shape[-2] // self.scale, hr.shape[-1] // self.scale):
            raise UserError(f"LR image {self.lr_files[index]} is {tuple(lr.shape[-2:])}, expected "
                            f"HR {tuple(hr.shape[-2:])} / {self.scale}")
        return hr, lr

    def preload(self, threads: int | None = None) -> None:
        """``cache="memory"``: decode every pair now (threads; PIL decodes without the GIL). Done in
        the main process before the loader's workers start, which then share the arrays; under
        torch.distributed every process of the process group calls it, and a node keeps one copy."""
        if self.cache != "memory" or self._mem is not None:
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._mem = self._node_shared(threads)
            return
        self._mem = self._decode_all(threads)

    def _decode_all(self, threads: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        with ThreadPoolExecutor(threads or min(16, os.cpu_count() or 1)) as ex:
            return list(ex.map(self._decode, range(len(self))))

    def _shared_path(self) -> str:
        """A file name in shared memory that names these images as they are now."""
        files = [*self.hr_files, *(self.lr_files or [])]
        ident = [self.scale] + [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
        key = hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:20]
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else os.path.join(os.sep, "tmp")
        return os.path.join(folder, f"vimd-sr-{key}.u8")

    def _node_shared(self, threads: int | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first process of each node decodes every pair into one shared-memory file (data, then
        an index of shapes beside it, each renamed into place once complete); after a barrier every
        process maps the file, and after a second one the first process unlinks it."""
        path = self._shared_path()
        first = int(os.environ.get("LOCAL_RANK", "0")) == 0
        if first and not os.path.isfile(path + ".json"):
            shapes, tmp = [], f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f, ThreadPoolExecutor(threads or min(16, os.cpu_count() or 1)) as ex:
                for pair in ex.map(self._decode, range(len(self))):  # written as they come, in order
                    shapes.append([list(t.shape) for t in pair])
                    for t in pair:
                        f.write(t.numpy().tobytes())
            os.replace(tmp, path)
            with open(tmp, "w") as f:
                json.dump(shapes, f)
            os.replace(tmp, path + ".json")
        dist.barrier()
        with open(path + ".json") as f:
            shapes = json.load(f)
        sizes = [math.prod(s) for pair in shapes for s in pair]
        flat = torch.from_file(path, shared=True, size=sum(sizes), dtype=torch.uint8)
        views = [v.view(*s) for v, s in zip(flat.split(sizes), (s for pair in shapes for s in pair))]
        dist.barrier()
        if first:
            for f in (path, path + ".json"):
                try:
                    os.unlink(f)
                except FileNotFoundError:  # another process group of this node removed it
                    pass
        return list(zip(views[0::2], views[1::2]))

    def get_u8(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mem[index] if self._mem is not None else self._decode(index)

    def get(self, index: int):
        hr, lr = self.get_u8(index)
        return to_float(hr), to_float(lr)


class SyntheticSR:
    """HR images from the synthetic dataset (rendered at ``size``), LR by MATLAB bicubic downsampling."""

    def __init__(self, size: int, n: int, split: str, seed: int, scale: int):
        from .synthetic import SyntheticFineGrained
        self.base = SyntheticFineGrained(10, n, split, seed, render_size=size - size % scale)
        self.scale, self.name = scale, f"synthetic_{split}"

    def __len__(self) -> int:
        return len(self.base)

    def get_u8(self, index: int):
        hr = to_uint8(self.base.get(index)[0].double() * 255)
        return hr, make_lr(hr, self.scale)

    def get(self, index: int):
        hr, lr = self.get_u8(index)
        return to_float(hr), to_float(lr)


__all__ = ["SRPairs", "SyntheticSR", "resolve_sr_folder", "imresize", "make_lr", "mod_crop", "list_images",
           "CACHES", "SET_LAYOUTS", "SIBLING_LR"]
