"""tools/gpu/gpu_check.sh on a machine without a GPU: the stages run in order, write their logs and
summary lines, and a stage that would start too late is skipped and says so. (Its GPU work, the
build and the benchmarks, is not run here; the `cuda`-marked tests it calls are skipped without a GPU.)"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from tools.gpu.runs import ROOT

pytestmark = pytest.mark.skipif(torch.cuda.is_available(),
                                reason="on a GPU this would run the whole GPU test suite")


def _run(tmp_path, stages: str, deadline_s: int, **extra_env) -> str:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "STAGES": stages, "PY": sys.executable,
           "DEADLINE_S": str(deadline_s), "TEST_WORKERS": "1", **extra_env}
    r = subprocess.run(["bash", "tools/gpu/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return (out / "summary.txt").read_text()


def test_test_stages_run_the_cuda_backend_then_the_triton_tests(tmp_path):
    summary = _run(tmp_path, "test test-triton", 300)
    lines = summary.splitlines()
    cuda = [i for i, s in enumerate(lines) if s.startswith("tests (-m 'cuda and not slow', cuda backend): rc=0")]
    triton = [i for i, s in enumerate(lines) if s.startswith("tests (-m cuda, triton backend): rc=0")]
    assert len(cuda) == 1 and len(triton) == 1 and cuda[0] < triton[0], summary
    assert "skipped" in lines[cuda[0]] and "skipped" in lines[triton[0]]
    # the cuda-backend set leaves the Triton file to its own stage (test ids from the JUnit files)
    ids = {k: [c.get("classname") for c in ET.parse(tmp_path / "out" / f"pytest_{k}.xml").iter("testcase")]
           for k in ("cuda", "triton")}
    assert ids["cuda"] and not [c for c in ids["cuda"] if "test_triton" in c]
    assert ids["triton"] and all("test_triton" in c for c in ids["triton"])
    for name in ("pytest_cuda.xml", "pytest_triton.xml", "env.txt"):
        assert (tmp_path / "out" / name).exists(), name


def test_a_stage_without_time_left_is_skipped_with_the_reason(tmp_path):
    summary = _run(tmp_path, "test", 30)
    assert "tests: skipped, only" in summary and "DEADLINE_S=30" in summary, summary
    assert not (tmp_path / "out" / "pytest_cuda.log").exists()


def test_pack_leaves_the_summary_beside_one_archive_of_everything(tmp_path):
    """PACK=1: the lent machine returns at most 8 files from $OUT, so everything goes in one archive."""
    import tarfile
    summary = _run(tmp_path, "test", 30, PACK="1")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "gpu_check.tar.gz", "summary.txt"]
    with tarfile.open(out / "gpu_check.tar.gz") as t:
        names = {os.path.normpath(n) for n in t.getnames()}
    assert {"summary.txt", "env.txt"} <= names and "tests: skipped, only" in summary


@pytest.mark.skipif(bool(__import__("shutil").which("ncu")), reason="ncu is installed here")
def test_ncu_stage_without_ncu_says_so(tmp_path):
    summary = _run(tmp_path, "ncu", 60)
    assert "ncu: not found" in summary, summary


def test_prebuilt_extension_hash_follows_the_sources(tmp_path):
    """gpu_check.sh uses a prebuilt extension only while tools/gpu/prebuild_ext.sh --hash of the
    tree matches the one recorded at build time: any change to a kernel source must change it."""
    import shutil

    def tree_hash(root) -> str:
        r = subprocess.run(["bash", "tools/gpu/prebuild_ext.sh", "--hash"], cwd=root, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    src = tmp_path / "tree"
    shutil.copytree(os.path.join(ROOT, "csrc"), src / "csrc")
    shutil.copytree(os.path.join(ROOT, "tools"), src / "tools")
    shutil.copy(os.path.join(ROOT, "setup.py"), src / "setup.py")
    first = tree_hash(src)
    assert len(first) == 64 and tree_hash(src) == first == tree_hash(ROOT)
    kernel = src / "csrc" / "cuda" / "selective_scan_fwd.cuh"
    kernel.write_text(kernel.read_text() + "\n")
    assert tree_hash(src) != first


def test_pack_versions_archives_a_commit_and_names_a_bad_one(tmp_path):
    import shutil
    import tarfile
    repo = tmp_path / "repo"
    (repo / "tools" / "gpu").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "tools", "gpu", "pack_versions.sh"), repo / "tools" / "gpu")
    (repo / "setup.py").write_text("# v1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "v1"]):
        subprocess.run(git + cmd, cwd=repo, check=True, capture_output=True)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                         check=True).stdout.strip()
    r = subprocess.run(["bash", "tools/gpu/pack_versions.sh", "HEAD"], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with tarfile.open(repo / ".carry" / "versions" / f"{sha}.tar.gz") as t:
        assert "setup.py" in t.getnames()
    r = subprocess.run(["bash", "tools/gpu/pack_versions.sh", "no-such-rev"], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 2 and "no commit named 'no-such-rev'" in r.stderr


def test_versions_stage_builds_each_packed_tree_and_reports_failures(tmp_path):
    """A packed tree whose build fails is named with its rc; without packed trees the stage says how
    to make them. (Building and timing real trees needs the GPU machine.)"""
    import shutil
    import tarfile
    summary = _run(tmp_path, "versions", 60, VERSIONS_DIR=str(tmp_path / "none"))
    assert "versions: nothing in" in summary and "pack_versions.sh" in summary, summary
    packed = tmp_path / "packed"
    packed.mkdir()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "setup.py").write_text("raise SystemExit(3)\n")
    with tarfile.open(packed / "deadbee.tar.gz", "w:gz") as t:
        t.add(tmp_path / "src" / "setup.py", arcname="setup.py")
    try:
        summary = _run(tmp_path, "versions", 120, VERSIONS_DIR=str(packed))
    finally:
        shutil.rmtree(os.path.join(ROOT, ".gpu_cache", "versions", "deadbee"), ignore_errors=True)
    assert "versions: 1 packed, 1 building in the background (deadbee.tar.gz" in summary, summary
    assert "versions: this tree timed: rc=" in summary            # no GPU here: the kernel benchmark refuses
    assert "versions: deadbee build rc=3" in summary, summary
