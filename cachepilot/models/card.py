"""Model cards: a machine-readable card.json beside the weights, rendered to a README.md for people."""

from __future__ import annotations

import json
from pathlib import Path

from cachepilot.io import atomic_write_text


def read_card(folder: str | Path) -> dict:
    path = Path(folder) / "card.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def update_card(folder: str | Path, **sections) -> dict:
    """Merge sections (e.g. training=..., quality=...) into card.json and re-render README.md."""
    folder = Path(folder)
    card = read_card(folder) | sections
    atomic_write_text(folder / "card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
    atomic_write_text(folder / "README.md", render_card(card))
    return card


def _table(d: dict) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in d.items())
    return f"| field | value |\n|---|---|\n{rows}\n"


def render_card(card: dict) -> str:
    parts = [f"# {card.get('name', 'model')}\n", card.get("description", "") + "\n"]
    for section in ("architecture", "data", "training", "quality", "speed"):
        if section in card:
            parts.append(f"## {section.capitalize()}\n\n{_table(card[section])}")
    if "notes" in card:
        parts.append("## Notes\n\n" + card["notes"] + "\n")
    return "\n".join(parts)
