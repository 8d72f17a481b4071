"""tools/gpu/tune_triton.py: the variant list, each variant's launch configurations, and a tiny sweep
under the Triton interpreter that leaves the modules' default configurations as they were."""
import dataclasses
import math

import pytest

from tools.gpu import tune_triton


def test_variants_start_with_the_default_tiling():
    v = tune_triton.variants("selective_scan")
    assert v[0] == {"block_d": None, "seg": None, "bwd_warps": None}
    assert len(v) == 1 + math.prod(len(x) for x in tune_triton.KNOBS["selective_scan"].values())
    assert tune_triton.variants("causal_conv1d", {"warps": (4, 8)}) == [{"warps": None}, {"warps": 4}, {"warps": 8}]


@pytest.mark.parametrize("op", sorted(tune_triton.KNOBS))
def test_configs_of_a_variant(op):
    """The default variant is the module's CONFIGS; a plain knob sets both kernels' field, a
    fwd_ / bwd_ knob only that kernel's."""
    pytest.importorskip("triton")
    mod = tune_triton.tune_module(op)
    assert tune_triton.configs(op, tune_triton.variants(op)[0]) == mod.CONFIGS
    got = tune_triton.configs(op, {"block_d": 4, "bwd_warps": 2, "fwd_warps": None})
    assert got["fwd"] == dataclasses.replace(mod.CONFIGS["fwd"], block_d=4)
    assert got["bwd"] == dataclasses.replace(mod.CONFIGS["bwd"], block_d=4, warps=2)


@pytest.mark.interpret
@pytest.mark.parametrize("op,knobs", [("selective_scan", {"seg": (4,), "bwd_warps": (4,)}),
                                      ("causal_conv1d", {"block_t": (8,), "warps": (4,)})])
def test_sweep_times_variants_and_leaves_the_defaults(op, knobs):
    mod = tune_triton.tune_module(op)
    before = dict(mod.CONFIGS)
    rows = tune_triton.sweep(op, "tiny", "float32", "cpu", knobs=knobs, quick=True)
    assert mod.CONFIGS == before
    assert len(rows) == 2 and all(r["ms"] > 0 and not r["note"] for r in rows), rows


@pytest.mark.interpret
def test_sweep_reports_a_variant_that_cannot_launch():
    rows = tune_triton.sweep("causal_conv1d", "tiny", "float32", "cpu", knobs={"block_t": (3,)}, quick=True)
    assert rows[0]["note"] == "" and math.isnan(rows[1]["ms"])
    assert rows[1]["note"].startswith("ValueError: LaunchConfig.block_t must be a power of two")
