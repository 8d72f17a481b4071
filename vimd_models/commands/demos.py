"""``vimd demo`` and ``vimd sr-photos``: the end-to-end runs that need no data on disk."""
from __future__ import annotations

from ..errors import UserError
from . import command


def _demo_args(p) -> None:
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every training length by this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=None)


@command("demo", "the end-to-end demo on synthetic data (no data on disk)", _demo_args)
def demo(a) -> int:
    from ..engine.demo import run_demo
    run_demo(a.out, scale=a.scale, seed=a.seed, backend=a.backend)
    return 0


def _photos_args(p) -> None:
    p.add_argument("--out", default="runs/sr_photos")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=None)
    p.add_argument("--iterations", type=int, default=None,
                   help="training iterations of each model (default: the photos_sr config's)")


@command("sr-photos", "DVMSR x4 with and without teacher supervision vs bicubic on real photos "
         "scikit-image ships (train on 10, test on 5 others)", _photos_args)
def sr_photos(a) -> int:
    from ..engine.photos import run_photos
    if a.iterations is not None and a.iterations <= 0:
        raise UserError(f"--iterations must be a positive integer, got {a.iterations}")
    run_photos(a.out, seed=a.seed, backend=a.backend, iterations=a.iterations)
    return 0
