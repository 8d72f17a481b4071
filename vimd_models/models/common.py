"""What every model family offers beyond forward (timm's model interface).

``ModelApi`` gives a family ``set_grad_checkpointing`` (blocks run under torch.utils.checkpoint,
recomputed in backward), ``no_weight_decay`` (the parameter names the optimizer should not decay)
and, for classifiers that name their head in ``classifier_name``, ``get_classifier`` and
``reset_classifier``; ``release_renames`` maps the family's official checkpoint names to ours.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..registry import is_no_decay


class ModelApi:
    grad_checkpointing = False
    classifier_name: str | None = None  # submodule holding the final nn.Linear, if the model has one
    head_init_std: float | None = None  # trunc-normal std of a new head (None: nn.Linear's default)
    # Official release names -> ours: (regex, replacement) rules applied in order by
    # vimd_models.weights; () when the release names already match; None: no release format.
    release_renames: tuple[tuple[str, str], ...] | None = None

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of keeping them (less memory,
        about one more forward of time); gradients are the same. (BatchNorm layers in training
        mode update their running statistics again when recomputed.)"""
        self.grad_checkpointing = enable

    def run_block(self, block: nn.Module, *args: Any) -> Any:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters kept out of weight decay: A_log, D, biases, norm weights,
        pos_embed, cls_token (as ``vimd_models.param_groups`` splits them)."""
        return {n for n, p in self.named_parameters() if is_no_decay(n, p)}

    def get_classifier(self) -> nn.Module:
        if self.classifier_name is None:
            raise TypeError(f"{type(self).__name__} has no classifier")
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised head for ``num_classes`` (0: no head, forward gives the pooled
        features), on the model's device and dtype."""
        old = self.get_classifier()
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        ref = next(self.parameters())
        head: nn.Module = nn.Identity()
        if num_classes > 0:
            head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            if self.head_init_std is not None:
                nn.init.trunc_normal_(head.weight, std=self.head_init_std)
                nn.init.zeros_(head.bias)
        head.train(old.training)
        setattr(self, self.classifier_name, head)
        self.num_classes = num_classes
