"""Lightning checkpoints a run resumes from, read without running code.

A Lightning checkpoint is a torch pickle. Each one this package's trainers save records its sha256 beside it
(`<file>.sha256`, written by `VerifiedCheckpoint`), and a checkpoint is read only once it matches, with
`torch.load(weights_only=True)`, which takes tensors and plain values only; Lightning is told to load it the same way
(`trainer.fit(..., weights_only=True)`). A checkpoint without its digest, or that does not match it, is damaged: set
aside, and the run goes on from where it would start without it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cachepilot.integrity import IntegrityError, file_digest
from cachepilot.io import atomic_write_text, read_or_set_aside

DIGEST_SUFFIX = ".sha256"


def digest_file(checkpoint: str | Path) -> Path:
    return Path(f"{checkpoint}{DIGEST_SUFFIX}")


class VerifiedCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, recording each saved file's sha256 beside it."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            atomic_write_text(digest_file(filepath), file_digest(Path(filepath)) + "\n")


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's content, after its recorded digest is verified; tensors and plain values only."""
    path = Path(path)
    recorded = digest_file(path)
    if not recorded.is_file():
        raise IntegrityError(f"{path} has no recorded digest ({recorded.name}), so it cannot be verified")
    if file_digest(path) != recorded.read_text().strip():
        raise IntegrityError(f"{path} does not match its recorded digest (truncated or altered)")
    return torch.load(path, map_location="cpu", weights_only=True)


def resumable_checkpoint(path: str | Path, log=print) -> dict | None:
    """The checkpoint at `path` if it is whole and verified; None when missing or damaged (then set aside)."""
    path = Path(path)
    return read_or_set_aside(path, read_checkpoint, log, also=(digest_file(path),))
