"""mamba_ssm / causal_conv1d under their own import paths, built on vimd's public ops.

The modules here carry the names and signatures of mamba_ssm 1.x/2.x (the Mamba-1 path),
hustvl/Vim's fork of mamba_ssm and causal_conv1d 1.x (docs/compat.md lists what each holds).
Code you can edit switches by import path::

    from vimd_kernels.compat.selective_scan_interface import selective_scan_fn, mamba_inner_fn

Code you cannot edit keeps its ``import mamba_ssm...`` lines: call ``install()`` once before it
runs. It adds an import hook that resolves ``mamba_ssm.*`` and ``causal_conv1d.*`` to these
modules (and to ``vimd_models.compat`` for the Mamba module and the utils), importing each only
when asked for. A really installed mamba_ssm or causal_conv1d is left in place unless
``force=True``.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings

_K = "vimd_kernels.compat"
_M = "vimd_models.compat"

# alias -> the module it resolves to; None: a package of its own (its exports below)
ALIASES = {
    "mamba_ssm": None,
    "mamba_ssm.ops": None,
    "mamba_ssm.ops.selective_scan_interface": f"{_K}.selective_scan_interface",
    "mamba_ssm.ops.triton": None,
    "mamba_ssm.ops.triton.layer_norm": f"{_K}.layer_norm",
    "mamba_ssm.ops.triton.layernorm": f"{_K}.layernorm",
    "mamba_ssm.ops.triton.selective_state_update": f"{_K}.selective_state_update",
    "mamba_ssm.modules": None,
    "mamba_ssm.modules.mamba_simple": f"{_M}.mamba_simple",
    "mamba_ssm.utils": None,
    "mamba_ssm.utils.generation": f"{_M}.utils.generation",
    "mamba_ssm.utils.hf": f"{_M}.utils.hf",
    "causal_conv1d": None,
    "causal_conv1d.causal_conv1d_interface": f"{_K}.causal_conv1d",
}

# what the packages export at their top level, as upstream's __init__ does: name -> module
EXPORTS = {
    "mamba_ssm": {"selective_scan_fn": f"{_K}.selective_scan_interface",
                  "mamba_inner_fn": f"{_K}.selective_scan_interface",
                  "bimamba_inner_fn": f"{_K}.selective_scan_interface",
                  "Mamba": f"{_M}.mamba_simple"},
    "causal_conv1d": {"causal_conv1d_fn": f"{_K}.causal_conv1d",
                      "causal_conv1d_update": f"{_K}.causal_conv1d"},
}

ROOTS = tuple(dict.fromkeys(a.split(".")[0] for a in ALIASES))


def _package(name: str) -> types.ModuleType:
    """A stand-in package: its exports and aliased submodules resolve on first attribute access."""
    module = types.ModuleType(name, f"vimd compat stand-in for {name} (vimd_kernels.compat)")
    exports = EXPORTS.get(name, {})

    def __getattr__(attr):
        if attr in exports:
            return getattr(importlib.import_module(exports[attr]), attr)
        if f"{name}.{attr}" in ALIASES:
            return importlib.import_module(f"{name}.{attr}")
        raise AttributeError(f"module {name!r} (vimd compat) has no attribute {attr!r}; it provides "
                             f"{sorted(exports) or 'submodules only'} (see docs/compat.md)")

    module.__getattr__ = __getattr__
    return module


class _Hook(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves the aliases of the roots in ``self.roots``."""

    def __init__(self):
        self.roots: set[str] = set()
        self._specs: dict = {}

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in ALIASES or fullname.split(".")[0] not in self.roots:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=ALIASES[fullname] is None)

    def create_module(self, spec):
        target = ALIASES[spec.name]
        if target is None:
            return _package(spec.name)
        module = importlib.import_module(target)
        self._specs[target] = module.__spec__  # the import system sets the alias's: undone below
        return module

    def exec_module(self, module):
        if module.__name__ in self._specs:  # a vimd module under an alias keeps its own spec
            module.__spec__ = self._specs[module.__name__]


_HOOK = _Hook()


def _ours(module) -> bool:
    spec = getattr(module, "__spec__", None)
    return getattr(spec, "loader", None) is _HOOK


def _real(root: str) -> str | None:
    """Where a really installed ``root`` lives (already imported or on sys.path), else None."""
    module = sys.modules.get(root)
    if module is not None and not _ours(module):
        return getattr(module, "__file__", None) or repr(module)
    spec = importlib.machinery.PathFinder.find_spec(root)
    return spec.origin if spec is not None else None


def _drop(root: str) -> None:
    for name in [n for n in sys.modules if n == root or n.startswith(root + ".")]:
        del sys.modules[name]


def install(force: bool = False) -> tuple[str, ...]:
    """Make ``import mamba_ssm...`` / ``import causal_conv1d...`` resolve to the compat modules.

    A root that is really installed (importable from sys.path, or already imported) is left alone,
    with a warning, unless ``force=True``, which also drops its already imported modules from
    ``sys.modules``. Returns the roots that now resolve here; calling it again is harmless.
    """
    for root in ROOTS:
        if root in _HOOK.roots:
            continue
        real = _real(root)
        if real is not None and not force:
            warnings.warn(f"{root} is installed ({real}); vimd_kernels.compat.install() leaves it in "
                          "place (install(force=True) replaces it)", stacklevel=2)
            continue
        _drop(root)
        _HOOK.roots.add(root)
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
    return tuple(r for r in ROOTS if r in _HOOK.roots)


def uninstall() -> None:
    """Undo ``install()``: remove the hook and the aliased modules from ``sys.modules``."""
    for root in list(_HOOK.roots):
        for name in [n for n in sys.modules if n.split(".")[0] == root and n in ALIASES]:
            del sys.modules[name]
    _HOOK.roots.clear()
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


__all__ = ["install", "uninstall", "ALIASES", "EXPORTS", "ROOTS"]
