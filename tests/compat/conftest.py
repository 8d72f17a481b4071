import importlib

import pytest

from vimd_kernels import compat


@pytest.fixture
def upstream():
    """The upstream import paths resolve to the compat modules for the test (force: even where a
    real mamba_ssm / causal_conv1d is installed); undone afterwards."""
    compat.install(force=True)
    yield importlib.import_module
    compat.uninstall()


@pytest.fixture(params=["cpu", "ref"])
def backend(request, monkeypatch):
    """The backend the compat functions (which take no backend argument) dispatch to."""
    from vimd_kernels import available_backends
    if request.param not in available_backends():
        pytest.skip(f"backend {request.param!r} is not available here")
    monkeypatch.setenv("VIMD_BACKEND", request.param)
    return request.param
