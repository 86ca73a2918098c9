"""The README stays a newcomer's page and the reference pages stay in step with the code they describe."""

import re
from pathlib import Path

from cachepilot.runtime import SIGNALS

ROOT = Path(__file__).parents[1]


def _links(page: Path) -> list[Path]:
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    return [(page.parent / t).resolve() for t in targets if "://" not in t]


def test_readme_is_short_and_its_links_resolve():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 200
    pages = [readme, *sorted((ROOT / "docs").glob("*.md"))]
    missing = [f"{page.name} -> {target}" for page in pages for target in _links(page) if not target.exists()]
    assert not missing, missing


def test_the_runtime_page_lists_every_declared_signal():
    page = (ROOT / "docs" / "runtime.md").read_text()
    assert [name for name in SIGNALS if f"| `{name}` |" not in page] == []
