"""tools/gpu/scan_plan.py: the variants it times (the timing itself needs a GPU)."""
import math

import pytest
import torch

from tools.gpu import scan_plan


@pytest.mark.parametrize("L,planned", [(65536, 256), (730, 736), (197, 200), (4096, 32), (9, 8)])
def test_chunk_candidates(L, planned):
    got = scan_plan.chunk_candidates(L, planned, 8)
    assert planned in got and got == sorted(set(got), reverse=True)
    assert all(c % 8 == 0 and c >= 8 for c in got)
    assert max(got) >= L  # one chunk is always among them
    n0 = math.ceil(L / planned)
    counts = {math.ceil(L / c) for c in got}
    for n in (2 * n0, 4 * n0):  # more chunks than planned, while chunks of 8 steps allow it
        if math.ceil(L / 8) >= n:
            assert any(abs(k - n) <= n // 4 + 1 for k in counts)


def test_patched_restores():
    class M:
        f = 1
    with scan_plan.patched(M, "f", 2):
        assert M.f == 2
    assert M.f == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_needs_a_gpu():
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        scan_plan.main(["--shapes", "vim-ti-s16"])
    with pytest.raises(SystemExit, match="--shapes: unknown shape .no-such-shape."):
        scan_plan.main(["--shapes", "no-such-shape"])
