"""vimd_models: ViM, SR (SRResNet, DVMSR) and ResNet model zoo behind one registry."""
from . import models  # noqa: F401  (registers the families)
from .factory import create_model
from .registry import list_models, param_groups, register_model

__all__ = ["create_model", "list_models", "register_model", "param_groups"]
