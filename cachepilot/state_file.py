"""Resumable state in files that cannot run code when read: tensors in safetensors, everything else in JSON.

A state is a tree of dicts, lists, tuples, numbers, strings, None, small numpy arrays and torch tensors (an agent's
weights and optimiser, the random generators' states, the episodes under way). `write_state(path, ...)` writes the
tensors to `<name>.<digest>.safetensors` beside `path`, then the rest of the tree, that file's name and its sha256
to the sealed JSON `path`, which is the commit point: a crash before it leaves the previous state whole.
`read_state` verifies the JSON's own checksum and the tensor file's sha256 before it parses the tensors. Neither
format can carry code, so a file planted in a run folder is at worst refused, never executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from cachepilot.integrity import IntegrityError, seal, unseal
from cachepilot.io import atomic_write_bytes, atomic_write_text

KIND = "cachepilot-state"


def _encode(value, tensors: dict[str, torch.Tensor]):
    """The JSON form of one node; tensors go to `tensors` under the key the node names."""
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"$tensor": key}
    if isinstance(value, np.ndarray):
        return {"$ndarray": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {"$dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"$tuple" if isinstance(value, tuple) else "$list": [_encode(v, tensors) for v in value]}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a state file holds tensors, arrays and plain values, not {type(value).__name__}")


def _decode(node, tensors: dict[str, torch.Tensor]):
    if not isinstance(node, dict):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise ValueError(f"unexpected node {node!r}")
    (tag, body), *rest = node.items() if node else [(None, None)]
    if tag == "$tensor":
        return tensors[body]
    if tag == "$ndarray":
        return np.asarray(body, dtype=np.dtype(node["dtype"]))
    if rest or tag is None:
        raise ValueError(f"unexpected node with keys {sorted(node)}")
    if tag == "$dict":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in body}
    if tag == "$list":
        return [_decode(v, tensors) for v in body]
    if tag == "$tuple":
        return tuple(_decode(v, tensors) for v in body)
    if tag == "$float":
        return float(body)
    raise ValueError(f"unknown node tag {tag!r}")


def _companions(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.*.safetensors"))


def write_state(path: str | Path, state, meta: dict | None = None) -> None:
    """Write `state` (see the module docstring) and `meta` (plain JSON, readable without the tensors) at `path`."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    blob = save_tensors(tensors)
    digest = hashlib.sha256(blob).hexdigest()
    tensor_file = path.with_name(f"{path.name}.{digest[:16]}.safetensors")
    atomic_write_bytes(tensor_file, blob)
    record = seal({"kind": KIND, "meta": meta or {}, "tree": tree, "tensors": tensor_file.name, "sha256": digest})
    atomic_write_text(path, json.dumps(record, allow_nan=False) + "\n")
    for old in _companions(path):
        if old != tensor_file:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


def read_meta(path: str | Path) -> dict:
    """The `meta` a state was written with, once its record's checksum is verified."""
    return _record(Path(path))["meta"]


def _record(path: Path) -> dict:
    record = unseal(json.loads(path.read_text()), str(path))
    if record.get("kind") != KIND:
        raise IntegrityError(f"{path} is not a cachepilot state file")
    return record


def read_state(path: str | Path) -> tuple[object, dict]:
    """(state, meta) of a state file: its record's checksum and its tensors' sha256 are verified before either is
    parsed. Raises IntegrityError on any mismatch, OSError or ValueError on a file that cannot be read."""
    path = Path(path)
    record = _record(path)
    name = record["tensors"]
    if Path(name).name != name or not name.startswith(f"{path.name}."):
        raise IntegrityError(f"{path} names a tensor file outside its folder: {name!r}")
    blob = (path.parent / name).read_bytes()
    if hashlib.sha256(blob).hexdigest() != record["sha256"]:
        raise IntegrityError(f"{path.parent / name} does not match the checksum in {path.name} (truncated or altered)")
    return _decode(record["tree"], load_tensors(blob)), record["meta"]


def remove_state(path: str | Path) -> None:
    """Delete a state file and its tensors."""
    path = Path(path)
    for file in (path, *_companions(path)):
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
