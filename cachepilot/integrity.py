"""Integrity of what cachepilot ships and writes: an altered, truncated or half-copied file is caught when it is
read, before anything runs with it.

Two forms, one per kind of artefact:
- a model folder carries a manifest, `checksums.json`: the sha256 of every file that changes what the model
  computes (its pipeline's configs and weights, and the oracle's profile beside them);
- a JSON record that stands alone (a policy card, a calibration) carries its own checksum: the sha256 of its
  canonical JSON without that field, so any edit of a value shows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cachepilot.errors import IntegrityError
from cachepilot.io import atomic_write_text

MANIFEST = "checksums.json"
CHECKSUM = "checksum"  # the field a sealed JSON record keeps its own checksum in


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _canonical(record: dict) -> bytes:
    body = {k: v for k, v in record.items() if k != CHECKSUM}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def seal(record: dict) -> dict:
    """The record with its checksum field set."""
    return {**record, CHECKSUM: hashlib.sha256(_canonical(record)).hexdigest()}


def unseal(record, what: str) -> dict:
    """The record without its checksum field, once the checksum is verified; `what` names it in errors."""
    if not isinstance(record, dict):
        raise IntegrityError(f"{what} is not a JSON object")
    if CHECKSUM not in record:
        raise IntegrityError(f"{what} carries no checksum (it was not written by cachepilot, or by an older one)")
    try:
        ok = record[CHECKSUM] == hashlib.sha256(_canonical(record)).hexdigest()
    except ValueError:  # NaN or Inf where JSON has none
        ok = False
    if not ok:
        raise IntegrityError(f"{what} does not match its checksum (it was edited or damaged)")
    return {k: v for k, v in record.items() if k != CHECKSUM}


def write_manifest(folder: Path, files) -> Path:
    """Record the sha256 of `files` (paths inside `folder`) in the folder's manifest."""
    folder = Path(folder)
    digests = {str(Path(f).relative_to(folder)): file_digest(Path(f)) for f in sorted(files)}
    atomic_write_text(folder / MANIFEST, json.dumps(digests, indent=2) + "\n")
    return folder / MANIFEST


def verify_manifest(folder: Path, files, required: bool, what: str) -> None:
    """Check that `files` (what the folder should hold, paths inside it) are exactly the manifest's, unaltered.
    Without a manifest: an error when `required`, else nothing is checked (a user's own folder)."""
    folder = Path(folder)
    listing = folder / MANIFEST
    if not listing.is_file():
        if required:
            raise IntegrityError(f"{what} has no {MANIFEST}, so it cannot be verified; reinstall or re-export it")
        return
    try:
        digests = json.loads(listing.read_text())
        if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
            raise ValueError("not a mapping of file names to sha256 digests")
    except (ValueError, UnicodeDecodeError) as err:
        raise IntegrityError(f"{listing} is malformed ({err}); reinstall or re-export {what}") from None
    present = {str(Path(f).relative_to(folder)) for f in files}
    unlisted = sorted(present - set(digests))
    if unlisted:
        raise IntegrityError(f"{what} holds files its {MANIFEST} does not list: {', '.join(unlisted)}")
    for rel, digest in digests.items():
        path = folder / rel
        if not path.is_file():
            raise IntegrityError(f"{what} lacks {rel}, listed in its {MANIFEST}; reinstall or re-export it")
        if file_digest(path) != digest:
            raise IntegrityError(f"{path} is corrupted or altered (it does not match {MANIFEST}); reinstall or re-export "
                                 f"{what}")
