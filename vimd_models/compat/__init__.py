"""mamba_ssm's model-side modules (``modules.mamba_simple``, ``utils.generation``, ``utils.hf``)
for code written against mamba_ssm or hustvl/Vim; ``install()`` aliases the import paths
(see ``vimd_kernels.compat`` and docs/compat.md)."""
from vimd_kernels.compat import install, uninstall

__all__ = ["install", "uninstall"]
