"""The extension examples of docs/architecture.md run as written, each in a fresh process (they
register a model, a task, a dataset and a command)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(ROOT, "docs", "architecture.md")


def _blocks() -> list[str]:
    with open(DOC) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_the_page_shows_every_kind_of_extension():
    assert len(_blocks()) == 4


@pytest.mark.parametrize("i", range(4))
def test_example_runs(i, tmp_path):
    r = subprocess.run([sys.executable, "-c", _blocks()[i]], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
