"""ViMD's networks: SRVM-Net (frozen SR sub-network -> ViM) and HRVM-Net (ViM)."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..factory import create_model
from ..registry import register_model
from .common import ModelApi
from .vim import VARIANTS, VisionMamba

SR_ARCHS = ("srresnet_x4", "dvmsr", "srresnet_micro", "dvmsr_micro")


class SRVMNet(ModelApi, nn.Module):
    """lr (B, 3, img_size/4, img_size/4) in [0, 1] -> SR (frozen, eval) -> ViM at img_size -> logits.

    ``model.sr`` never trains: its parameters have requires_grad False and it stays in eval mode
    under ``.train()`` (gradients still flow through it to the input, e.g. to a generator).
    """
    classifier_name = "classifier.head"

    def __init__(self, sr: nn.Module, classifier: VisionMamba):
        super().__init__()
        self.sr, self.classifier = sr, classifier
        self.num_classes, self.num_features = classifier.num_classes, classifier.num_features
        self.upscale = sr.upscale
        # reductions relative to the LR input (the classifier's are relative to the SR output)
        self.feature_info = [dict(fi, module="classifier." + fi["module"],
                                  reduction=fi["reduction"] // self.upscale if fi["reduction"] % self.upscale == 0
                                  else fi["reduction"] / self.upscale)
                             for fi in classifier.feature_info]
        self.sr.requires_grad_(False)
        self.sr.eval()

    def train(self, mode: bool = True) -> "SRVMNet":
        super().train(mode)
        self.sr.eval()
        return self

    def super_resolve(self, lr: Tensor) -> Tensor:
        hr = self.classifier.img_size
        if lr.dim() != 4 or lr.shape[-1] * self.upscale != hr or lr.shape[-2] * self.upscale != hr:
            raise ValueError(f"lr must be (batch, 3, {hr // self.upscale}, {hr // self.upscale}) "
                             f"(img_size / upscale), got {tuple(lr.shape)}")
        return self.sr(lr).clamp(0.0, 1.0)

    def forward_features(self, lr: Tensor) -> Tensor:
        return self.classifier.forward_features(self.super_resolve(lr))

    def forward_head(self, feats: Tensor, pre_logits: bool = False) -> Tensor:
        return self.classifier.forward_head(feats, pre_logits)

    def forward(self, lr: Tensor) -> Tensor:
        return self.classifier(self.super_resolve(lr))

    def forward_intermediates(self, lr: Tensor, indices: int | Sequence[int] | None = None
                              ) -> tuple[Tensor, list[Tensor]]:
        return self.classifier.forward_intermediates(self.super_resolve(lr), indices)

    def tokens_to_map(self, tokens: Tensor) -> Tensor:
        return self.classifier.tokens_to_map(tokens)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.classifier.set_grad_checkpointing(enable)  # the SR network is frozen: nothing to keep

    def reset_classifier(self, num_classes: int) -> None:
        self.classifier.reset_classifier(num_classes)
        self.num_classes = num_classes


@register_model
def srvm_net(num_classes: int = 1000, sr_arch: str = "srresnet_x4", img_size: int = 224,
             sr_kwargs: dict | None = None, backend: str | None = None, **vim_kwargs) -> SRVMNet:
    """SRVM-Net: ``sr_arch`` (srresnet_x4 | dvmsr, or a micro variant) -> ViM (vim_tiny_patch16_224
    defaults, overridable through vim kwargs) at ``img_size`` (the HR size)."""
    if sr_arch not in SR_ARCHS:
        raise ValueError(f"sr_arch must be one of {SR_ARCHS}, got {sr_arch!r}")
    sr = create_model(sr_arch, backend=backend, **(sr_kwargs or {}))
    vim_defaults = dict(embed_dim=192, depth=24, patch_size=16)  # stride = patch_size unless given
    clf = VisionMamba(**{**vim_defaults, "num_classes": num_classes, "img_size": img_size,
                         "backend": backend, **vim_kwargs})
    return SRVMNet(sr, clf)


def hrvm_net(num_classes: int = 1000, **vim_kwargs) -> VisionMamba:
    """HRVM-Net (the ViMD teacher): ViM-tiny, patch 16 stride 8 (as released) at 224 by default."""
    defaults = dict(embed_dim=192, depth=24, patch_size=16, stride=8, img_size=224)
    return VisionMamba(**{**defaults, "num_classes": num_classes, **vim_kwargs})


# ViMD fine-tunes from hustvl's stride-8 ImageNet Vim-Ti (the ViMD paper's initialisation) on [0, 1]
# pixels without mean/std, so the release's normalize=True is not applied here.
_HRVM_CFG = {k: v for k, v in VARIANTS["vim_tiny_patch16_stride8_224"][1].items() if k != "model_kwargs"}
register_model(hrvm_net, pretrained_cfg=_HRVM_CFG)
