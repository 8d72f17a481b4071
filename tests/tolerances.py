"""The one tolerance table: (rtol, atol) per kernel and input dtype, compared in float32."""
import torch

TOL = {
    "scan": {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3),
             torch.bfloat16: (3e-2, 5e-2), torch.float64: (1e-10, 1e-10)},
    "conv": {torch.float32: (3e-4, 1e-3), torch.float16: (3e-3, 5e-3),
             torch.bfloat16: (1e-2, 5e-2), torch.float64: (1e-10, 1e-10)},
}


def assert_close(actual, expected, kernel: str, dtype: torch.dtype, what: str = "", scale: float = 1.0):
    """Compare in float32 (float64 for float64) with the table's tolerance for ``kernel``/``dtype``.

    ``scale`` widens atol for quantities that sum over long axes (gradients of weights shared over
    batch and L), chosen from the reduction length, never from the observed error.
    """
    rtol, atol = TOL[kernel][dtype]
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    torch.testing.assert_close(actual.to(ct), expected.to(ct), rtol=rtol, atol=atol * scale,
                               msg=lambda m: f"{what}: {m}")
