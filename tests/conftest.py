import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def toy_pipe():
    """The shipped toy-wan pipeline, loaded once."""
    from cachepilot.models.registry import load_pipeline

    pipe = load_pipeline("toy-wan")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _copy_toy_wan(folder: Path) -> Path:
    from cachepilot.models.registry import embedded_path

    return Path(shutil.copytree(embedded_path("toy-wan"), folder / "toy-wan"))


@pytest.fixture
def toy_copy(tmp_path):
    """A private copy of the shipped toy-wan folder that a test may damage."""
    return _copy_toy_wan(tmp_path)


@pytest.fixture(scope="module")
def module_toy_copy(tmp_path_factory):
    """A copy of the shipped toy-wan shared by one module's tests, which may change it in order."""
    return _copy_toy_wan(tmp_path_factory.mktemp("model"))
