"""``vimd table``: a paper's result table from finished runs."""
from __future__ import annotations

from . import command


def _args(p) -> None:
    p.add_argument("name", nargs="?")
    p.add_argument("--runs", default=None, help="folder of the run folders (default: each config's output_dir)")
    p.add_argument("-o", "--out", default=None, help="also write OUT.md and OUT.csv")


@command("table", "a paper's result table from finished runs (no NAME: list the tables)", _args)
def table(a) -> int:
    from ..tables import table_command
    print(table_command(a.name, a.runs, a.out), end="")
    return 0
