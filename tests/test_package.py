"""The distribution installs one import root, `cachepilot`, with the top-level folders mapped into it."""

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize("name", ["cachepilot.policies", "cachepilot.envs", "cachepilot.train", "cachepilot.infer",
                                  "cachepilot.models", "cachepilot.checkpoints", "cachepilot.cli"])
def test_mapped_packages_import(name):
    assert importlib.import_module(name).__name__ == name


def test_no_bare_top_level_modules_leak(tmp_path):
    # Run from an unrelated folder so the repository root is not on sys.path.
    code = "import importlib.util as u; print([n for n in ('train', 'envs', 'infer', 'policies', 'checkpoints') if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shipped_toy_wan_is_packaged():
    from cachepilot.models.registry import embedded_path, weights_present

    assert weights_present("toy-wan")
    assert (embedded_path("toy-wan") / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
