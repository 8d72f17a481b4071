import pytest
import torch


# torch.compile and torch.export through vimd's custom ops are tested from this torch on: on torch
# 2.7.1 dynamo fails to build a guard on the backends' capability lookup (and, with the lookup
# copied, a compiled backward returns no conv-weight gradient); eager use is tested on 2.7.1.
GRAPH_CAPTURE_MIN_TORCH = (2, 13)


def _torch_version() -> tuple[int, int]:
    return tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def pytest_collection_modifyitems(config, items):
    old_capture = _torch_version() < GRAPH_CAPTURE_MIN_TORCH
    has_cuda = torch.cuda.is_available()
    from vimd_kernels import registry
    interp = registry.interpreting()
    if interp and registry._INTERP_PROBLEM is not None:
        # the Triton tests would all be skipped as "unavailable": say why instead of passing empty
        raise pytest.UsageError(f"TRITON_INTERPRET=1, but {registry._INTERP_PROBLEM}")
    for item in items:
        if "graph_capture" in item.keywords and old_capture:
            item.add_marker(pytest.mark.skip(reason=f"torch.compile/export of vimd's ops needs torch >= "
                                                    f"{'.'.join(map(str, GRAPH_CAPTURE_MIN_TORCH))}, "
                                                    f"this is {torch.__version__}"))
        if "cuda" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "interpret" in item.keywords and not interp and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="run with TRITON_INTERPRET=1 (make test-interpret)"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cache_home(tmp_path_factory, monkeypatch):
    """The data check's header cache ($XDG_CACHE_HOME/vimd) goes to the session's temp folder, also
    for the CLI subprocesses, never to the home folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))
