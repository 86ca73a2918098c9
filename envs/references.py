"""The reference store: full-compute outputs (and, when asked, per-step trajectories) on disk, reused everywhere.

One entry per (model, model hash, prompt, seed, steps, guidance, scheduler): a safetensors file holding
`output` (the decoded frames, (F, H, W, 3) in [0, 1]) and optionally `trajectory` (the latents after
every step) with the uncached run's signals in its metadata. `index.json` maps each entry's digest to its
file and sha256; a missing, truncated or altered file fails the checksum and is rebuilt, never used.
Writes are atomic and the index is updated under a file lock, so concurrent processes can share a store.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from cachepilot import checks
from cachepilot.io import atomic_write_bytes, atomic_write_text, locked
from cachepilot.parallel import Processes, Shard
from cachepilot.models.stepping import generate_batch, generation_options
from cachepilot.provenance import identifying_config
from cachepilot.policies.base import BasePolicy
from cachepilot.runtime import FULL, cached

STORE_ENV = "CACHEPILOT_REFERENCES"
FULL_HASH_LIMIT = 50_000_000  # parameters; above this the model hash reads per-tensor statistics, not bytes


def default_root() -> Path:
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "cachepilot" / "references"


def model_hash(pipe) -> str:
    """A fingerprint of the weights that shape the output: every torch module of the pipeline.

    Exact (all tensor bytes) for models up to FULL_HASH_LIMIT parameters; for larger ones, each tensor's
    name, shape, dtype, sum and absolute sum (any retraining or swapped file still changes it).
    """
    digest = hashlib.sha256()
    modules = sorted((name, m) for name, m in pipe.components.items() if isinstance(m, torch.nn.Module))
    total = sum(p.numel() for _, m in modules for p in m.state_dict().values())
    for name, module in modules:
        digest.update(name.encode())
        config = getattr(module, "config", None)
        if config is not None:
            digest.update(json.dumps(identifying_config(module), sort_keys=True, default=str).encode())
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
            t = tensor.detach()
            if total <= FULL_HASH_LIMIT:
                digest.update(t.cpu().contiguous().view(torch.uint8).numpy().tobytes())
            else:
                digest.update(f"{float(t.double().sum()):.12e}{float(t.double().abs().sum()):.12e}".encode())
    return digest.hexdigest()[:16]


def scheduler_id(pipe) -> str:
    scheduler = pipe.scheduler
    config = json.dumps(dict(scheduler.config), sort_keys=True, default=str)
    return f"{type(scheduler).__name__}-{hashlib.sha256(config.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class ReferenceKey:
    model: str
    model_hash: str
    prompt: str
    seed: int
    steps: int
    guidance: float
    scheduler: str
    options: str = ""  # the generation options (video size, ...) and a device other than the CPU, as JSON

    @property
    def digest(self) -> str:
        fields = {k: v for k, v in asdict(self).items() if k != "options" or v}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class Reference:
    key: ReferenceKey
    output: torch.Tensor  # (F, H, W, 3) float32 in [0, 1]
    trajectory: torch.Tensor | None = None  # (steps, *latent shape): latents after each step
    signals: list[dict] | None = None  # the uncached run's signals, one dict per transformer call


def safetensors_metadata(data: bytes) -> dict:
    """The string metadata of a safetensors blob (its JSON header's __metadata__)."""
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len]).get("__metadata__", {}) or {}


class _Recorder(BasePolicy):
    """Always FULL (bit-identical to the uncached model), recording every call's signals when asked to."""

    name = "reference"

    def __init__(self, record: bool):
        self.records: list[dict] = []
        self.record = record
        self.signals = None if record else frozenset()  # all optional signals, or none of them

    def decide(self, signals, valid):
        if self.record:
            self.records.append(signals.as_dict())
        return FULL


class ReferenceStore:
    def __init__(self, pipe, model: str, steps: int = 50, guidance: float = 5.0, root: str | Path | None = None):
        self.pipe, self.model, self.steps, self.guidance = pipe, model, int(steps), float(guidance)
        self.root = checks.folder(root) if root is not None else default_root()
        self.model_hash = model_hash(pipe)
        self.scheduler = scheduler_id(pipe)
        options = generation_options(pipe)
        device = pipe._execution_device.type
        if device != "cpu":
            options["device"] = device
        self.options = json.dumps(options, sort_keys=True, default=str) if options else ""

    def key(self, prompt: str, seed: int) -> ReferenceKey:
        return ReferenceKey(self.model, self.model_hash, prompt, int(seed), self.steps, self.guidance, self.scheduler,
                            self.options)

    # ---- index ---------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def _locked(self):
        return locked(self.root)

    def _read_index(self) -> dict | None:
        """The index as stored; None when it is damaged (not JSON, or entries without their fields)."""
        try:
            index = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError):
            return None
        fields = {"file": str, "sha256": str, "key": dict, "trajectory": bool}
        ok = isinstance(index, dict) and all(
            isinstance(e, dict) and all(isinstance(e.get(k), t) for k, t in fields.items()) for e in index.values())
        return index if ok else None

    def _index(self, locked: bool = False) -> dict:
        """The index; a damaged one is rebuilt from the entry files, each verified, with a one-line warning."""
        index = self._read_index()
        if index is not None:
            return index
        if not locked:
            with self._locked():
                return self._index(locked=True)
        index = {}
        for path in sorted(self.root.glob("*.safetensors")):
            entry = self._entry_of(path)
            if entry is not None:
                index[path.stem] = entry
        atomic_write_text(self.index_path, json.dumps(index, indent=1, sort_keys=True))
        warnings.warn(f"reference index {self.index_path} was damaged; rebuilt it from the {len(index)} intact entries "
                      "beside it", stacklevel=3)
        return index

    def _entry_of(self, path: Path) -> dict | None:
        """An index entry for a stored reference file, if it is whole and named by the digest of the key it holds."""
        try:
            data = path.read_bytes()
            key = ReferenceKey(**json.loads(safetensors_metadata(data)["key"]))
            tensors = load_safetensors(data)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError):
            return None
        if key.digest != path.stem or "output" not in tensors:
            return None
        return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest(), "key": asdict(key),
                "trajectory": "trajectory" in tensors}

    # ---- read ----------------------------------------------------------------------------
    def load(self, prompt: str, seed: int, trajectory: bool = False) -> Reference | None:
        """The stored reference, or None when it is missing, lacks a requested trajectory, or fails its checksum."""
        key = self.key(prompt, seed)
        entry = self._index().get(key.digest)
        if entry is None or (trajectory and not entry.get("trajectory")):
            return None
        path = self.root / entry["file"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None
        if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            warnings.warn(f"reference {path.name} is missing or corrupted (checksum mismatch); rebuilding it", stacklevel=2)
            return None
        tensors = load_safetensors(data)
        signals = safetensors_metadata(data).get("signals")
        return Reference(key, tensors["output"], tensors.get("trajectory"), json.loads(signals) if signals else None)

    def get(self, prompt: str, seed: int, trajectory: bool = False) -> Reference:
        return self.get_many([(prompt, seed)], trajectory=trajectory, progress=False)[0]

    def get_many(self, pairs, trajectory: bool = False, batch_size: int = 16, progress: bool = True) -> list[Reference]:
        """References for (prompt, seed) pairs, building the missing ones in batches (with a progress bar)."""
        pairs = [(p, int(s)) for p, s in pairs]
        found = {pair: self.load(*pair, trajectory=trajectory) for pair in dict.fromkeys(pairs)}
        found.update(self.build([pair for pair, ref in found.items() if ref is None], trajectory, batch_size,
                                progress=progress))
        return [found[pair] for pair in pairs]

    def build(self, missing: list[tuple[str, int]], trajectory: bool = False, batch_size: int = 16,
              shard: Shard = Shard(), progress: bool = True) -> dict[tuple[str, int], Reference]:
        """Build and store the references of `missing` pairs in batches of `batch_size`; with `shard`, only every
        world-th batch, from the rank-th (so each entry is computed in the batch one process computes it in)."""
        batches = shard.take([missing[i : i + batch_size] for i in range(0, len(missing), batch_size)])
        label = "building references" + (f" (process {shard.rank + 1}/{shard.world})" if shard.world > 1 else "")
        built = {}
        for batch in tqdm(batches, desc=label, unit="batch", disable=not progress or not batches):
            built.update(zip(batch, self._build(batch, trajectory)))
        return built

    def outputs(self, pairs) -> np.ndarray:
        """The full-compute frames of (prompt, seed) pairs, stacked (what a generation's frames are scored against)."""
        return np.stack([r.output.numpy() for r in self.get_many(pairs, progress=False)])

    def put(self, prompt: str, seed: int, output) -> Reference:
        """Store a full-compute output computed elsewhere (e.g. by the oracle's reference pass)."""
        ref = Reference(self.key(prompt, seed), torch.as_tensor(output, dtype=torch.float32).contiguous())
        self._write(ref)
        return ref

    def missing(self, pairs, trajectory: bool = False) -> list[tuple[str, int]]:
        """The pairs without a sound stored reference (with its trajectory, if asked), in order, once each."""
        return [pair for pair in dict.fromkeys((p, int(s)) for p, s in pairs)
                if self.load(*pair, trajectory=trajectory) is None]

    # ---- build ---------------------------------------------------------------------------
    @torch.no_grad()
    def _build(self, pairs: list[tuple[str, int]], trajectory: bool) -> list[Reference]:
        pipe = self.pipe
        recorder = _Recorder(record=trajectory)
        latents: list[torch.Tensor] = []

        def keep_latents(_step, step_latents):
            latents.append(step_latents.detach().float().cpu())

        with cached(pipe, recorder, num_inference_steps=self.steps):
            frames = generate_batch(pipe, [p for p, _ in pairs], [s for _, s in pairs], self.steps, self.guidance,
                                    on_step=keep_latents if trajectory else None)
        refs = []
        for i, (prompt, seed) in enumerate(pairs):
            traj = torch.stack([lat[i] for lat in latents]) if trajectory else None
            signals = [r for r in recorder.records if r["sample"] == i] if trajectory else None
            ref = Reference(self.key(prompt, seed), torch.as_tensor(frames[i], dtype=torch.float32), traj, signals)
            self._write(ref)
            refs.append(ref)
        return refs

    def _write(self, ref: Reference) -> None:
        digest = ref.key.digest
        tensors = {"output": ref.output.contiguous()}
        if ref.trajectory is not None:
            tensors["trajectory"] = ref.trajectory.contiguous()
        metadata = {"key": json.dumps(asdict(ref.key), sort_keys=True)}
        if ref.signals is not None:
            metadata["signals"] = json.dumps(ref.signals)
        data = save_safetensors(tensors, metadata=metadata)
        entry = {"file": f"{digest}.safetensors", "sha256": hashlib.sha256(data).hexdigest(), "key": asdict(ref.key),
                 "trajectory": ref.trajectory is not None}
        atomic_write_bytes(self.root / entry["file"], data)
        with self._locked():
            index = self._index(locked=True)
            index[digest] = entry
            atomic_write_text(self.index_path, json.dumps(index, indent=1, sort_keys=True))


def build_references(source, pairs, steps: int, guidance: float, root=None, trajectory: bool = False,
                     batch_size: int = 16, processes: Processes = Processes()) -> int | None:
    """Build the missing references of `pairs` over `processes` (Lightning Fabric's flags); returns how many were
    missing. The missing pairs are cut into the batches one process would build, and each process builds every
    world-th batch: every entry is computed in the same batch as by one process, so the files are the same bytes.
    The first process returns the count, the others None."""
    return processes.launch(_build_shard, source, list(pairs), steps, guidance, root, trajectory, batch_size)


def _build_shard(shard: Shard, source, pairs, steps, guidance, root, trajectory, batch_size) -> int | None:
    source = replace(source, device=shard.device or source.device)
    store = ReferenceStore(source.load(), source.name, steps=steps, guidance=guidance, root=root)
    missing = store.missing(pairs, trajectory)
    shard.wait()  # every process has listed what is missing before any of them writes
    store.build(missing, trajectory, batch_size, shard)
    return len(missing) if shard.rank == 0 else None
