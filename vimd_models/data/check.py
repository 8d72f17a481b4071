"""Dataset check before training: every image file of every split decodes.

``data.check: full`` (or true, the default) decodes every file completely, so a truncated or
corrupt file is found before the first step; ``headers`` reads only the header (``PIL.Image.open``
+ size: seconds for tens of thousands of images, but a file cut short passes it); false skips
the check. Files are read in parallel threads, and files already seen unchanged -- same (path,
size, mtime), checked at least as thoroughly -- are skipped through a small JSON cache in
``$XDG_CACHE_HOME/vimd`` (default ``~/.cache/vimd``). Every unreadable file is reported at once,
in one error. Synthetic datasets have no files and are not checked.

A dataset takes part through its base dataset's ``file_groups()``: a list of (path, group) with
the group a class name (classification) or the folder role (SR: HR / LR).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

from ..errors import UserError

SHOWN = 10  # bad files listed in the error (then a count)
MODES = {True: "full", "full": "full", "headers": "headers"}  # data.check -> how much is read (false: nothing)


def cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vimd")


def _cache_path(paths: list[str], folder: str) -> str:
    root = os.path.commonpath(paths) if paths else ""
    return os.path.join(folder, f"image-headers-{hashlib.sha1(root.encode()).hexdigest()[:16]}.json")


def _load_cache(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _probe(path: str, full: bool):
    """(size, mtime_ns, width, height, fully decoded) of a readable image file, or the reason it
    cannot be read."""
    from PIL import Image
    try:
        st = os.stat(path)
        with Image.open(path) as im:
            w, h = im.size
            if full:
                im.load()
        return [st.st_size, st.st_mtime_ns, w, h, full]
    except FileNotFoundError:
        return "file not found"
    except Exception as e:  # PIL raises many types for unknown / damaged files
        return f"{type(e).__name__}: {e}"


def _unchanged(path: str, entry, full: bool) -> bool:
    """The cache entry still describes the file, and was checked at least as thoroughly."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (isinstance(entry, list) and entry[:2] == [st.st_size, st.st_mtime_ns]
            and (not full or (len(entry) > 4 and entry[4] is True)))


def check_files(paths: Iterable[str], cache: str | None = None, progress: bool = True,
                write_cache: bool = True, full: bool = True) -> dict[str, str]:
    """Decode every file (``full``; else read its header); returns {path: reason} of those that
    cannot be read. Files whose (size, mtime) match the cache file ``cache`` (a folder) are not
    opened again."""
    paths = sorted(set(os.path.abspath(p) for p in paths))
    cache_file = _cache_path(paths, cache) if cache else None
    known = _load_cache(cache_file) if cache_file else {}
    todo = [p for p in paths if not _unchanged(p, known.get(p), full)]
    bad: dict[str, str] = {}
    if todo:
        from tqdm import tqdm
        with tqdm(total=len(todo), desc="checking images", unit="file", leave=False, dynamic_ncols=True,
                  disable=not progress) as bar, ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            for p, res in zip(todo, pool.map(_probe, todo, [full] * len(todo))):
                if isinstance(res, str):
                    bad[p] = res
                    known.pop(p, None)
                else:
                    known[p] = res
                bar.update(1)
        if cache_file and write_cache:
            from ..checkpoint import atomic_write
            try:
                atomic_write(cache_file, json.dumps(known).encode())
            except OSError:
                pass  # a read-only cache folder only costs the next run the check again
    return bad


def _splits(train_ds, eval_dss) -> list[tuple[str, object]]:
    """(split name, base dataset) of every split read from files."""
    named = ([("train", train_ds)] if train_ds is not None else []) + \
        [(getattr(ds, "name", None) or "val", ds) for ds in eval_dss]
    return [(name, getattr(ds, "base", ds)) for name, ds in named
            if hasattr(getattr(ds, "base", ds), "file_groups")]


def _summary(name: str, base, counts: Counter) -> str:
    """One line per split: the count of each group, or for many classes their range."""
    if len(counts) <= 4:
        groups = ", ".join(f"{g} {n:,}" for g, n in sorted(counts.items()))
    else:
        groups = f"{len(counts)} classes, {min(counts.values()):,} to {max(counts.values()):,} per class"
    where = getattr(base, "where", "")
    return f"data {name}: {sum(counts.values()):,} images ({groups}){f' from {where}' if where else ''}"


def check_data(train_ds, eval_dss, progress: bool = True, per_group: bool = False,
               out: Callable[[str], None] | None = print, write_cache: bool = True, mode: str = "full") -> int:
    """Print the image counts of each split (and of each class with ``per_group``), then decode
    every file (``mode`` "full") or read its header ("headers"); one UserError lists the files that
    cannot be read. Returns the number of files checked (0 for synthetic data)."""
    splits = _splits(train_ds, eval_dss)
    if not splits:
        return 0
    counts = {name: Counter(g for _, g in base.file_groups()) for name, base in splits}
    if out is not None:
        for name, base in splits:
            out(_summary(name, base, counts[name]))
        if per_group:
            groups = sorted({g for c in counts.values() for g in c})
            width = max(5, *(len(g) for g in groups))
            out(f"{'class':<{width}}  " + "  ".join(f"{n:>7}" for n, _ in splits))
            for g in groups:
                out(f"{g:<{width}}  " + "  ".join(f"{counts[n].get(g, 0):>7}" for n, _ in splits))
    paths = sorted({p for _, base in splits for p, _ in base.file_groups()})
    bad = check_files(paths, cache_dir(), progress, write_cache, full=mode == "full")
    if bad:
        listed = [f"  {p}: {why}" for p, why in sorted(bad.items())[:SHOWN]]
        more = [f"  ... and {len(bad) - SHOWN} more"] if len(bad) > SHOWN else []
        raise UserError(f"{len(bad)} of {len(paths)} image files cannot be read "
                        "(fix or remove them; data.check=false skips this check):\n"
                        + "\n".join(listed + more))
    return len(paths)
