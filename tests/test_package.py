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


def test_pyproject_lists_every_package_folder():
    """A package missing from the explicit list works in an editable install but not from a wheel."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).parents[1]
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, mapping = set(tool["packages"]), tool["package-dir"]
    found = set()
    for prefix, folder in mapping.items():
        for init in (root / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(root / folder)
            found.add(".".join([prefix, *rel.parts]))
    assert found <= listed, f"missing from [tool.setuptools] packages: {sorted(found - listed)}"
