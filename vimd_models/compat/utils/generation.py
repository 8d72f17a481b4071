"""mamba_ssm ``mamba_ssm.utils.generation``: the decoding cache a model's layers share
(``InferenceParams``) and the ``GenerationMixin`` base class (no sampling loop here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import Tensor


@dataclass
class InferenceParams:
    """Inference parameters that are passed to the main model in order to efficiently calculate and
    store the context during inference: each Mamba layer keeps (conv_state, ssm_state) in
    ``key_value_memory_dict[layer_idx]``; ``seqlen_offset > 0`` makes it step token by token."""

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: Optional[Tensor] = None

    def reset(self, max_seqlen, max_batch_size):
        self.max_seqlen = max_seqlen
        self.max_batch_size = max_batch_size
        self.seqlen_offset = 0
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()


class GenerationMixin:
    """Base class models inherit for mamba_ssm's ``generate``; vimd has no language-model
    decoding loop, so ``generate`` raises NotImplementedError."""

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        raise NotImplementedError

    def generate(self, input_ids, max_length, top_k=1, top_p=0.0, min_p=0.0, temperature=1.0,
                 return_dict_in_generate=False, output_scores=False, **kwargs):
        raise NotImplementedError("generate: vimd's compat layer has no text decoding loop; step the "
                                  "model with InferenceParams (seqlen_offset > 0) yourself")


__all__ = ["InferenceParams", "GenerationMixin"]
