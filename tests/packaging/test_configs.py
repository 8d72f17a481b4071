"""The packaged configs: found by name, a path still works, and the repository's configs/ is the
same folder."""
import os

import pytest

from vimd_models.configs import CONFIG_DIR, list_configs, resolve_config_path
from vimd_models.engine.config import load_config
from vimd_models.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_names_resolve_to_the_packaged_files():
    assert "vimd_cub" in list_configs() and "demo_teacher" in list_configs()
    want = os.path.join(CONFIG_DIR, "vimd_cub.yaml")
    assert resolve_config_path("vimd_cub") == want and resolve_config_path("vimd_cub.yaml") == want
    cfg = load_config("demo_teacher", ["train.epochs=1"])
    assert cfg["name"] == "demo_teacher" and cfg["train"]["epochs"] == 1


def test_a_path_wins_and_unknown_names_suggest(tmp_path, monkeypatch):
    own = tmp_path / "vimd_cub.yaml"
    own.write_text("task: classify\n")
    assert resolve_config_path(str(own)) == str(own)
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("vimd_cub.yaml") == "vimd_cub.yaml"  # a file in the working folder
    with pytest.raises(UserError, match="config file not found: vimd_cbu; packaged configs with a close name: vimd_cub"):
        resolve_config_path("vimd_cbu")
    with pytest.raises(UserError, match="config file not found: elsewhere/vimd_cub.yaml"):
        resolve_config_path("elsewhere/vimd_cub.yaml")


def test_repository_configs_folder_is_the_packaged_one():
    assert os.path.samefile(os.path.join(ROOT, "configs"), CONFIG_DIR)
