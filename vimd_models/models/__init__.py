"""Model families, one file each; importing this package registers them all."""
from . import dvmsr, resnet, srresnet, vim, vimd  # noqa: F401
