"""tools/gpu/tune_triton.py: the variant list, and a tiny sweep under the Triton interpreter
that restores the modules' TUNE knobs afterwards."""
import math

import pytest

from tools.gpu import tune_triton


def test_variants_start_with_the_default_tiling():
    v = tune_triton.variants("selective_scan")
    assert v[0] == {"block_d": None, "seg": None, "bwd_warps": None}
    assert len(v) == 1 + math.prod(len(x) for x in tune_triton.KNOBS["selective_scan"].values())
    assert tune_triton.variants("causal_conv1d", {"warps": (4, 8)}) == [{"warps": None}, {"warps": 4}, {"warps": 8}]


@pytest.mark.interpret
@pytest.mark.parametrize("op,knobs", [("selective_scan", {"seg": (4,), "bwd_warps": (4,)}),
                                      ("causal_conv1d", {"block_t": (8,), "warps": (4,)})])
def test_sweep_times_variants_and_restores_tune(op, knobs):
    mod = tune_triton.tune_module(op)
    before = dict(mod.TUNE)
    rows = tune_triton.sweep(op, "tiny", "float32", "cpu", knobs=knobs, quick=True)
    assert mod.TUNE == before
    assert len(rows) == 2 and all(r["ms"] > 0 and not r["note"] for r in rows), rows
