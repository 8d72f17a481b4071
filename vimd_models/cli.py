"""The ``vimd`` command; its subcommands are registered in vimd_models/commands/.

    vimd train configs/vimd_cub.yaml data.root=/data/CUB_200_2011 train.epochs=10
    vimd train configs/vimd_cub.yaml --resume            # continue <output_dir>/<name>/
    vimd train configs/vimd_cub.yaml --resume optim.lr=1e-4   # ... with a lower learning rate
    vimd check-data configs/vimd_cub.yaml data.root=/data/CUB_200_2011
    vimd eval configs/vimd_cub.yaml --weights runs/vimd_cub/best.safetensors
    vimd demo [--out runs/demo] [--scale 1.0]
    vimd flops vim_tiny_patch16_224 --input 3,224,224
    vimd bench kernels --preset cpu --out results/bench   # kernel benchmark (vimd bench kernels --help)
    vimd bench models --quick                             # model benchmark (vimd bench models --help)
    vimd table vimd --runs runs -o results/vimd       # the paper's table from finished runs
    vimd export dvmsr --input 1,3,64,64 --out dvmsr.pt2  # AOTInductor package (docs/deploy.md)
    vimd sr --weights runs/dvmsr_div2k/model.safetensors --config dvmsr_div2k a.png -o out/
    vimd predict --weights runs/hrvm_cub/best.safetensors --config hrvm_cub bird.jpg

User mistakes (config, data, checkpoint) and a diverged run print ``vimd: error: ...`` (one line,
or a short list of the bad files / the offending YAML lines) and exit with 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from .errors import Preempted, UserError


def _parser() -> argparse.ArgumentParser:
    from .commands import COMMANDS
    p = argparse.ArgumentParser(prog="vimd", description="ViMD / DVMSR / DFKD-FGVC training and evaluation")
    sub = p.add_subparsers(dest="cmd", required=True)
    for c in COMMANDS.values():
        sp = sub.add_parser(c.name, help=c.help)
        c.args(sp)
        sp.set_defaults(func=c.run, trailing=c.trailing)
    return p


def _one_line(msg: str) -> str:
    """A UserError raised in a DataLoader worker arrives wrapped with the worker's traceback."""
    if "Original Traceback" in msg:
        last = msg.strip().splitlines()[-1]
        return last.split("UserError: ", 1)[-1]
    return msg


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    a, rest = parser.parse_known_args(argv)
    resume = getattr(a, "resume", None)
    if resume and "=" in resume and not os.path.exists(resume):  # --resume optim.lr=1e-4: an override
        a.resume, a.overrides = "auto", [*a.overrides, resume]
    if rest:  # key=value arguments may come after options: vimd eval cfg --weights w data.root=...
        field = getattr(a, "trailing", None)
        if field and all("=" in r and not r.startswith("-") for r in rest):
            setattr(a, field, list(getattr(a, field)) + rest)
        else:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return a.func(a)
    except UserError as e:
        print(f"vimd: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except Preempted as e:
        print(f"vimd: {e}", file=sys.stderr)
        return Preempted.EXIT_CODE
    except KeyboardInterrupt:
        print("vimd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output left (`vimd models | head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 141  # as a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
