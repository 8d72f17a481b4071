"""install(): the upstream import paths resolve to the compat modules, lazily; a really installed
package is left alone unless force=True; uninstall() undoes it."""
import importlib
import sys
import warnings

import pytest

from vimd_kernels import compat

IMPORTS = {  # upstream module -> the names code written for it imports
    "mamba_ssm": ["selective_scan_fn", "mamba_inner_fn", "bimamba_inner_fn", "Mamba"],
    "mamba_ssm.ops.selective_scan_interface": ["selective_scan_fn", "selective_scan_ref", "mamba_inner_fn",
                                               "mamba_inner_ref", "bimamba_inner_fn", "mamba_inner_fn_no_out_proj"],
    "mamba_ssm.ops.triton.layernorm": ["RMSNorm", "layer_norm_fn", "rms_norm_fn"],
    "mamba_ssm.ops.triton.layer_norm": ["RMSNorm", "layer_norm_fn", "rms_norm_fn"],
    "mamba_ssm.ops.triton.selective_state_update": ["selective_state_update"],
    "mamba_ssm.modules.mamba_simple": ["Mamba", "Block"],
    "mamba_ssm.utils.generation": ["GenerationMixin", "InferenceParams"],
    "mamba_ssm.utils.hf": ["load_config_hf", "load_state_dict_hf"],
    "causal_conv1d": ["causal_conv1d_fn", "causal_conv1d_update"],
    "causal_conv1d.causal_conv1d_interface": ["causal_conv1d_fn", "causal_conv1d_ref", "causal_conv1d_update"],
}


def test_every_upstream_import_resolves(upstream):
    for module, names in IMPORTS.items():
        m = upstream(module)
        for name in names:
            assert callable(getattr(m, name)), f"{module}.{name}"
    from mamba_ssm.modules.mamba_simple import Mamba
    from vimd_models.compat.mamba_simple import Mamba as Ours
    assert Mamba is Ours
    import vimd_kernels.compat.selective_scan_interface as ssi
    assert sys.modules["mamba_ssm.ops.selective_scan_interface"] is ssi
    assert ssi.__spec__.name == ssi.__name__  # the vimd module keeps its own identity
    import mamba_ssm
    with pytest.raises(AttributeError, match="Mamba2"):
        mamba_ssm.Mamba2


def test_uninstall_removes_the_names(upstream):
    import mamba_ssm  # noqa: F401
    compat.uninstall()
    assert not any(n.split(".")[0] in compat.ROOTS for n in sys.modules)
    with pytest.raises(ImportError):
        importlib.import_module("mamba_ssm")


def test_a_real_install_is_left_alone(tmp_path, monkeypatch):
    """A mamba_ssm on sys.path wins unless force=True."""
    (tmp_path / "mamba_ssm").mkdir()
    (tmp_path / "mamba_ssm" / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.warns(UserWarning, match="mamba_ssm is installed"):
            assert compat.install() == ("causal_conv1d",)
        assert importlib.import_module("mamba_ssm").REAL
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert compat.install(force=True) == compat.ROOTS
        assert not hasattr(importlib.import_module("mamba_ssm"), "REAL")
        assert importlib.import_module("mamba_ssm").selective_scan_fn
    finally:
        compat.uninstall()
        sys.modules.pop("mamba_ssm", None)
