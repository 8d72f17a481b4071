"""The compat modules' signatures against upstream's, parameter by parameter (names, kinds, order,
defaults), written down from the upstream sources named in each row.

Sources: mamba_ssm 2.2.x = state-spaces/mamba (release 2.2.x tree); mamba_ssm 1.1.x = the same
repository at 1.1.x, which hustvl/Vim forks as ``mamba-1p1p1/mamba_ssm``; Vim = hustvl/Vim's fork
(its current ``mamba-1p1p1`` tree); causal_conv1d 1.x = Dao-AILab/causal-conv1d
``causal_conv1d/causal_conv1d_interface.py`` (1.4+).

``exact``: the same parameters; ``prefix``: upstream's parameters first, then only keyword-only
or defaulted extras (a later release's additions, or vimd's).
"""
import importlib
import inspect

import pytest
from torch import nn

SSI = "mamba_ssm/ops/selective_scan_interface.py"
V2 = "state-spaces/mamba 2.2.x"
V1 = "state-spaces/mamba 1.1.x"
VIM = "hustvl/Vim mamba-1p1p1"
CC = "Dao-AILab/causal-conv1d 1.x causal_conv1d/causal_conv1d_interface.py"
K = "vimd_kernels.compat"
M = "vimd_models.compat"
MIXER_ARGS = "xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight"
SCAN = "u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False"
INNER = (f"{MIXER_ARGS}, out_proj_weight, out_proj_bias, A, B=None, C=None, D=None, delta_bias=None, "
         "B_proj_bias=None, C_proj_bias=None, delta_softplus=True")
BIMAMBA = (f"{MIXER_ARGS}, out_proj_weight, out_proj_bias, A, A_b, B=None, C=None, D=None, "
           "delta_bias=None, B_proj_bias=None, C_proj_bias=None, delta_softplus=True")
SSU = "state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False"
MAMBA = ('d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1, '
         'dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False, '
         'use_fast_path=True, layer_idx=None, device=None, dtype=None')
LN2 = ("x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=1e-6, dropout_p=0.0, "
       "rowscale=None, prenorm=False, residual_in_fp32=False")

# (ours "module:qualname", upstream source, upstream parameters, mode)
TABLE = [
    (f"{K}.selective_scan_interface:selective_scan_fn", f"{V2} {SSI}", SCAN, "exact"),
    (f"{K}.selective_scan_interface:selective_scan_ref", f"{V2} {SSI}", SCAN, "exact"),
    (f"{K}.selective_scan_interface:mamba_inner_fn", f"{V2} {SSI}",
     INNER + ", checkpoint_lvl=1, b_rms_weight=None, c_rms_weight=None, dt_rms_weight=None, "
     "b_c_dt_rms_eps=1e-6", "exact"),
    (f"{K}.selective_scan_interface:mamba_inner_fn", f"{VIM} {SSI}", INNER, "prefix"),
    (f"{K}.selective_scan_interface:mamba_inner_ref", f"{V2} {SSI}", INNER, "exact"),
    (f"{K}.selective_scan_interface:mamba_inner_fn_no_out_proj", f"{VIM} {SSI}",
     f"{MIXER_ARGS}, A, B=None, C=None, D=None, delta_bias=None, B_proj_bias=None, "
     "C_proj_bias=None, delta_softplus=True", "exact"),
    (f"{K}.selective_scan_interface:bimamba_inner_fn", f"{VIM} {SSI}", BIMAMBA, "exact"),
    (f"{K}.selective_scan_interface:bimamba_inner_ref", f"{VIM} {SSI}", BIMAMBA, "exact"),
    (f"{K}.causal_conv1d:causal_conv1d_fn", CC,
     "x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False, "
     "final_states_out=None, activation=None", "exact"),
    (f"{K}.causal_conv1d:causal_conv1d_ref", CC,
     "x, weight, bias=None, initial_states=None, return_final_states=False, final_states_out=None, "
     "activation=None", "exact"),
    (f"{K}.causal_conv1d:causal_conv1d_update", CC,
     "x, conv_state, weight, bias=None, activation=None, cache_seqlens=None, conv_state_indices=None",
     "exact"),
    (f"{K}.causal_conv1d:causal_conv1d_update_ref", CC,
     "x, conv_state, weight, bias=None, activation=None, cache_seqlens=None", "exact"),
    (f"{K}.selective_state_update:selective_state_update",
     f"{V2} mamba_ssm/ops/triton/selective_state_update.py", SSU + ", state_batch_indices=None", "exact"),
    (f"{K}.selective_state_update:selective_state_update",
     f"{V1} mamba_ssm/ops/triton/selective_state_update.py", SSU, "prefix"),
    (f"{K}.selective_state_update:selective_state_update_ref",
     f"{V2} mamba_ssm/ops/triton/selective_state_update.py", SSU, "exact"),
    (f"{K}.layer_norm:layer_norm_fn", f"{V2} mamba_ssm/ops/triton/layer_norm.py",
     LN2 + ", is_rms_norm=False, return_dropout_mask=False", "exact"),
    (f"{K}.layer_norm:rms_norm_fn", f"{V2} mamba_ssm/ops/triton/layer_norm.py",
     LN2 + ", return_dropout_mask=False", "exact"),
    (f"{K}.layer_norm:RMSNorm", f"{V2} mamba_ssm/ops/triton/layer_norm.py",
     "hidden_size, eps=1e-5, dropout_p=0.0, device=None, dtype=None", "exact"),
    (f"{K}.layer_norm:RMSNorm.forward", f"{V2} mamba_ssm/ops/triton/layer_norm.py",
     "x, residual=None, prenorm=False, residual_in_fp32=False", "exact"),
    (f"{K}.layernorm:layer_norm_fn", f"{V1} mamba_ssm/ops/triton/layernorm.py",
     "x, weight, bias, residual=None, eps=1e-6, prenorm=False, residual_in_fp32=False, "
     "is_rms_norm=False", "exact"),
    (f"{K}.layernorm:rms_norm_fn", f"{V1} mamba_ssm/ops/triton/layernorm.py",
     "x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6", "exact"),
    (f"{K}.layernorm:RMSNorm", f"{V1} mamba_ssm/ops/triton/layernorm.py",
     "hidden_size, eps=1e-5, device=None, dtype=None", "exact"),
    (f"{K}.layernorm:RMSNorm.forward", f"{V1} mamba_ssm/ops/triton/layernorm.py",
     "x, residual=None, prenorm=False, residual_in_fp32=False", "exact"),
    (f"{M}.mamba_simple:Mamba", f"{VIM} mamba_ssm/modules/mamba_simple.py",
     MAMBA + ', bimamba_type="none", if_divide_out=False, init_layer_scale=None', "prefix"),
    (f"{M}.mamba_simple:Mamba", f"{V2} mamba_ssm/modules/mamba_simple.py", MAMBA, "prefix"),
    (f"{M}.mamba_simple:Mamba.forward", f"{V2} mamba_ssm/modules/mamba_simple.py",
     "hidden_states, inference_params=None", "exact"),
    (f"{M}.mamba_simple:Mamba.step", f"{V2} mamba_ssm/modules/mamba_simple.py",
     "hidden_states, conv_state, ssm_state", "exact"),
    (f"{M}.mamba_simple:Mamba.allocate_inference_cache", f"{V2} mamba_ssm/modules/mamba_simple.py",
     "batch_size, max_seqlen, dtype=None, **kwargs", "exact"),
    (f"{M}.mamba_simple:Mamba._get_states_from_cache", f"{V2} mamba_ssm/modules/mamba_simple.py",
     "inference_params, batch_size, initialize_states=False", "exact"),
    (f"{M}.mamba_simple:Block", f"{V1} mamba_ssm/modules/mamba_simple.py",
     "dim, mixer_cls, norm_cls=nn.LayerNorm, fused_add_norm=False, residual_in_fp32=False", "exact"),
    (f"{M}.mamba_simple:Block.forward", f"{V1} mamba_ssm/modules/mamba_simple.py",
     "hidden_states, residual=None, inference_params=None", "exact"),
    (f"{M}.mamba_simple:Block.allocate_inference_cache", f"{V1} mamba_ssm/modules/mamba_simple.py",
     "batch_size, max_seqlen, dtype=None, **kwargs", "exact"),
    (f"{M}.utils.generation:InferenceParams.reset", f"{V2} mamba_ssm/utils/generation.py",
     "max_seqlen, max_batch_size", "exact"),
    (f"{M}.utils.hf:load_config_hf", f"{V2} mamba_ssm/utils/hf.py", "model_name", "exact"),
    (f"{M}.utils.hf:load_state_dict_hf", f"{V2} mamba_ssm/utils/hf.py",
     "model_name, device=None, dtype=None", "exact"),
]


def _params(fn) -> list:
    """(name, kind, default) of every parameter but self; a class by its __init__."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    return [(p.name, p.kind, p.default) for p in inspect.signature(target).parameters.values()
            if p.name != "self"]


def _upstream(params: str) -> list:
    namespace = {"nn": nn}
    exec(f"def upstream({params}): pass", namespace)
    return _params(namespace["upstream"])


def _ours(path: str):
    module, _, qualname = path.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("ours, source, params, mode", TABLE,
                         ids=[f"{r[0].split(':')[1]}-{r[1].split()[0]}-{r[3]}" for r in TABLE])
def test_signature_matches_upstream(ours, source, params, mode):
    mine, theirs = _params(_ours(ours)), _upstream(params)
    assert mine[:len(theirs)] == theirs, f"{ours} vs {source}:\n ours {mine}\n upstream {theirs}"
    extras = mine[len(theirs):]
    if mode == "exact":
        assert not extras, f"{ours} has parameters upstream ({source}) lacks: {extras}"
    for name, kind, default in extras:  # callers written for upstream never need them
        assert kind == inspect.Parameter.KEYWORD_ONLY or default is not inspect.Parameter.empty, name


def test_inference_params_fields_match_upstream():
    """mamba_ssm 2.2.x mamba_ssm/utils/generation.py: the dataclass's fields and defaults."""
    import dataclasses

    from vimd_models.compat.utils.generation import InferenceParams
    fields = [(f.name, f.default, f.default_factory) for f in dataclasses.fields(InferenceParams)]
    M = dataclasses.MISSING
    assert fields == [("max_seqlen", M, M), ("max_batch_size", M, M), ("seqlen_offset", 0, M),
                      ("batch_size_offset", 0, M), ("key_value_memory_dict", M, dict),
                      ("lengths_per_sample", None, M)]
    p = InferenceParams(max_seqlen=8, max_batch_size=2, seqlen_offset=3)
    p.reset(16, 4)
    assert (p.max_seqlen, p.max_batch_size, p.seqlen_offset) == (16, 4, 0)
