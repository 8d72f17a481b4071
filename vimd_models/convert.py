"""The import path of the release converters in earlier versions; everything lives in
``vimd_models.weights``."""
from .weights import (adapt_state_dict, convert_state_dict, load_checkpoint, load_official,  # noqa: F401
                      load_pretrained, our_names, read_checkpoint, resample_pos_embed, unwrap)
