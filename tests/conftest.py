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


@pytest.fixture
def toy_copy(tmp_path):
    """A private copy of the shipped toy-wan folder that a test may damage."""
    import shutil

    from cachepilot.models.registry import embedded_path

    dst = tmp_path / "toy-wan"
    shutil.copytree(embedded_path("toy-wan"), dst)
    return dst
