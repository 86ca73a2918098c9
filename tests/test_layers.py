"""Imports flow one way between the folders, and a module imports what it needs at its top.

Static tools cannot follow the package-dir mapping of pyproject.toml, so this test reads the mapping and
assigns every source file and every imported `cachepilot.*` module to a layer itself.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]
# Lowest first: a module may import its own layer and the layers before it, never one after it.
LAYERS = ("core", "policies", "envs", "evaluation", "train", "infer", "entry")
# Modules of the core folder that sit on top of everything: the command line and the lazy top-level API.
ENTRY_MODULES = {"cachepilot", "cachepilot.cli"}


def _package_dirs() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def layer_of(module: str) -> str:
    if module in ENTRY_MODULES or module.startswith("cachepilot.cli."):
        return "entry"
    parts = module.split(".")
    if parts[0] != "cachepilot":
        raise ValueError(module)
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "core"  # cachepilot.runtime, .models, .metrics, .io, ... and the shipped artefacts (data only)


def source_modules() -> dict[str, Path]:
    """Every module of the distribution, by its import name."""
    modules = {}
    for package, folder in _package_dirs().items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [*package.split("."), *rel.parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported cachepilot module, line, at module level) for every import in the file."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    top_level |= {id(n) for node in tree.body if isinstance(node, ast.If) for n in node.body}  # TYPE_CHECKING blocks
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [f"{base}.{alias.name}" for alias in node.names]  # a submodule, or a name of module `base`
        else:
            continue
        for name in names:
            found.append((name, node.lineno, id(node) in top_level))
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a module or a module.attribute) refers to."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def test_imports_flow_one_way_between_folders():
    modules = source_modules()
    assert "cachepilot.evaluation.oracle" in modules and "cachepilot.cli" in modules
    upward = []
    for module, path in modules.items():
        mine = LAYERS.index(layer_of(module))
        for name, line, _ in imports(module, path):
            target = _known(name, modules)
            if target is not None and LAYERS.index(layer_of(target)) > mine:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({layer_of(module)}) imports {target} ({layer_of(target)})")
    assert not upward, "imports against the layer order " + " <- ".join(LAYERS) + ":\n" + "\n".join(sorted(set(upward)))


def test_imports_inside_functions_say_why():
    """A module imports at its top; an import inside a function is there for a stated reason (start-up time of
    a heavy or optional dependency) in a comment on its line or above its group of imports."""
    unexplained = set()
    for module, path in source_modules().items():
        lines = path.read_text().splitlines()
        for name, line, at_top in imports(module, path):
            if not at_top and not _commented(lines, line - 1):
                unexplained.add(f"{path.relative_to(ROOT)}:{line}")
    assert not unexplained, "imports inside functions without a reason:\n" + "\n".join(sorted(set(unexplained)))


def _commented(lines: list[str], index: int) -> bool:
    """Whether line `index` or the comment line heading its block of imports (blank lines end a block) has a comment."""
    while index >= 0 and lines[index].strip():
        text = lines[index].strip()
        if "#" in text:
            return True
        if not text.startswith(("from ", "import ", ")")) and not text.endswith((",", "(", ")")):
            return False
        index -= 1
    return False


def test_the_checker_sees_an_upward_import(tmp_path):
    """The layer test itself: a core module importing training is caught."""
    path = tmp_path / "bad.py"
    path.write_text("from cachepilot.train.distill import distill\nfrom .registry import get_spec\n")
    modules = source_modules()
    found = [(_known(name, modules), line) for name, line, _ in imports("cachepilot.models.bad", path)]
    assert found == [("cachepilot.train.distill", 1), ("cachepilot.models.registry", 2)]
    assert LAYERS.index(layer_of("cachepilot.train.distill")) > LAYERS.index(layer_of("cachepilot.models.bad"))
    assert _known("cachepilot.checks", modules) == "cachepilot.checks" and layer_of("cachepilot.checks") == "core"
    assert layer_of(_known("cachepilot.apply_cache", modules)) == "entry"  # the lazy API is on top
