"""`cachepilot models`: the known models and whether their weights are present."""

from __future__ import annotations

from .common import print_table

HELP = "list known models and whether their weights are present"


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    from cachepilot.models.registry import MODELS, weights_path, weights_present  # imported when run (cachepilot.cli)

    rows = []
    for name, spec in MODELS.items():
        path = weights_path(name)
        status = "present" if weights_present(name) else ("missing" if path else "--model-path")
        rows.append([name, spec.pipeline_class, status, spec.description])
    print_table("cachepilot models", ["model", "pipeline", "weights", "description"], rows)
    return 0
