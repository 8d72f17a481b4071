"""Ahead-of-time compile of the Triton kernels for sm_90, no GPU needed: the quick subset of
scripts/check_triton_compile.py (every kernel at real shapes and tilings) must compile with no
register spills.  Skipped under the interpreter, or when this triton lacks the AOT API or ptxas."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_triton_compile.py"


def _load_checker():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 replaces the compiler")
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        from triton import knobs  # noqa: F401  (triton >= 3.4)
        from triton.compiler import ASTSource  # noqa: F401
        from triton.runtime.jit import create_function_from_signature  # noqa: F401
        get_ptxas(90)  # RuntimeError when the wheel has no usable ptxas
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"no Triton AOT compile here: {type(e).__name__}: {e}")
    spec = importlib.util.spec_from_file_location("check_triton_compile", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_quick_subset_compiles_for_sm90_without_spills():
    chk = _load_checker()
    cases = [c for c in chk.CASES if c.name in chk.QUICK]
    results = chk.check(cases, archs=[90], sms=132, out=lambda line: None)  # also: every kernel ran
    bad = [chk.fmt(r) for r in results if r.failed]
    assert not bad, "\n".join(bad)
