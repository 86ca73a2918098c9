"""The model zoo: which models cachepilot knows, where their weights are, and how to load them.

toy-wan ships inside the package (checkpoints/toy-wan). Real families load from a local diffusers
folder, given by `model_path` or found as `$CACHEPILOT_MODELS_DIR/<name>`; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cachepilot import checks
from cachepilot.errors import CorruptWeightsError, InvalidInputError, UnknownModelError, WeightsNotFoundError
from cachepilot.integrity import verify_manifest, write_manifest

MODELS_DIR_ENV = "CACHEPILOT_MODELS_DIR"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # toy-wan | wan | hunyuanvideo | cogvideox | ltx-video
    pipeline_class: str  # diffusers (or cachepilot) pipeline class that loads the folder
    description: str
    embedded: bool = False  # weights ship with cachepilot


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("toy-wan", "toy-wan", "ToyWanPipeline", "1.7M-param WanTransformer3DModel on 3x8x16x16 synthetic videos", embedded=True),
        ModelSpec("wan2.1-t2v-1.3b", "wan", "WanPipeline", "Wan2.1 text-to-video 1.3B (Wan-AI/Wan2.1-T2V-1.3B-Diffusers)"),
        ModelSpec("wan2.1-t2v-14b", "wan", "WanPipeline", "Wan2.1 text-to-video 14B (Wan-AI/Wan2.1-T2V-14B-Diffusers)"),
        ModelSpec("wan2.2-t2v-a14b", "wan", "WanPipeline", "Wan2.2 text-to-video A14B (Wan-AI/Wan2.2-T2V-A14B-Diffusers)"),
        ModelSpec("hunyuanvideo", "hunyuanvideo", "HunyuanVideoPipeline", "HunyuanVideo 13B (hunyuanvideo-community/HunyuanVideo)"),
        ModelSpec("cogvideox-5b", "cogvideox", "CogVideoXPipeline", "CogVideoX 5B (THUDM/CogVideoX-5b)"),
        ModelSpec("ltx-video", "ltx-video", "LTXPipeline", "LTX-Video 2B (Lightricks/LTX-Video)"),
    ]
}


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None


def embedded_path(name: str) -> Path:
    """A folder shipped with cachepilot: a model's weights and artefacts, or "calibration"."""
    return shipped_folder() / name


def weights_path(name: str, model_path: str | Path | None = None) -> Path | None:
    """Where this model's diffusers folder is expected (None: nowhere configured)."""
    spec = get_spec(name)
    if model_path is not None:
        return Path(model_path)
    if spec.embedded:
        return embedded_path(name)
    root = os.environ.get(MODELS_DIR_ENV)
    return Path(root) / name if root else None


def weights_present(name: str, model_path: str | Path | None = None) -> bool:
    path = weights_path(name, model_path)
    return path is not None and (path / "model_index.json").is_file()


ARTEFACTS = ("oracle_gain.npz",)  # measured for these weights and kept beside them: covered by the manifest


def pipeline_components(folder: Path) -> list[str]:
    """The components a pipeline folder's model_index.json names; an error where it names no pipeline or none."""
    path = folder / "model_index.json"
    try:
        index = json.loads(path.read_text())
        components = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)]
    except (ValueError, UnicodeDecodeError, AttributeError) as err:
        raise CorruptWeightsError(f"{path} is malformed ({err}); reinstall or re-export it") from None
    if not isinstance(index.get("_class_name"), str) or not components:
        raise CorruptWeightsError(f"{path} names no pipeline class or no components, so {folder} is not a diffusers "
                                  "pipeline folder; reinstall or re-export it")
    return components


def model_files(folder: Path) -> list[Path]:
    """Every file of a pipeline folder that changes what the model computes: model_index.json, the files of the
    components it names, and the measured artefacts beside them."""
    components = pipeline_components(folder)
    files = [folder / "model_index.json"]
    for name in components:
        files += [p for p in sorted((folder / name).rglob("*")) if p.is_file()]
    return files + [folder / a for a in ARTEFACTS if (folder / a).is_file()]


def write_checksums(folder: Path) -> None:
    """The folder's manifest, so an altered, truncated or missing file is caught at load time."""
    write_manifest(folder, model_files(folder))


def verify_checksums(folder: Path, required: bool) -> None:
    verify_manifest(folder, model_files(folder), required, f"the model folder {folder}")


DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ModelSource:
    """Which model, from where, on which device and in which dtype, and how it is called (video size, ...): what a
    command needs to load a pipeline, and every later load of the same run (a validation copy) to load it again."""

    name: str = "toy-wan"
    path: str | None = None
    device: str | None = None
    dtype: str | None = None  # one of DTYPES; None: as saved
    options: tuple[tuple[str, object], ...] = ()  # generation options (models.stepping.set_generation_options)

    def __post_init__(self):
        get_spec(self.name)
        if self.dtype is not None and self.dtype not in DTYPES:
            raise InvalidInputError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        checks.device(self.device)

    @classmethod
    def of(cls, model: "str | ModelSource", model_path: str | Path | None = None) -> "ModelSource":
        if isinstance(model, ModelSource):
            return model
        return cls(model, None if model_path is None else str(model_path))

    def load(self):
        """The pipeline, loaded from local files only, with its generation options set."""
        # diffusers' pipelines take 5-9 s to import; listing models and checking their weights need none of it
        import torch
        from cachepilot.models.stepping import set_generation_options

        pipe = load_pipeline(self.name, self.path, self.device, getattr(torch, self.dtype) if self.dtype else None)
        set_generation_options(pipe, **dict(self.options))
        return pipe


def load_pipeline(name: str, model_path: str | Path | None = None, device: str | None = None, torch_dtype=None):
    """Load a known model as a diffusers pipeline from local files only, with clear errors."""
    # diffusers' pipelines take 5-9 s to import; listing models and checking their weights need none of it
    import diffusers
    from diffusers.utils import logging as diffusers_logging
    from cachepilot.models.toy_wan import ToyWanPipeline

    spec = get_spec(name)
    path = weights_path(name, model_path)
    if path is None:
        raise WeightsNotFoundError(
            f"no weights for {name!r}: pass --model-path DIR (a local diffusers folder) or set {MODELS_DIR_ENV}"
        )
    if not path.is_dir():
        raise WeightsNotFoundError(f"weights folder for {name!r} not found: {path}")
    if not (path / "model_index.json").is_file():
        raise WeightsNotFoundError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    pipeline_components(path)
    verify_checksums(path, required=spec.family == "toy-wan")  # cachepilot's own exports carry a manifest
    pipeline_class = ToyWanPipeline if spec.family == "toy-wan" else getattr(diffusers, spec.pipeline_class)
    kwargs = {"local_files_only": True}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    bar_was_on = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # loading takes well under a second; keep stderr for errors
    try:
        pipe = pipeline_class.from_pretrained(path, **kwargs)
    except (OSError, ValueError, EnvironmentError, json.JSONDecodeError, RuntimeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorruptWeightsError(f"could not load {name!r} from {path}: {first_line}") from err
    finally:
        if bar_was_on:
            diffusers_logging.enable_progress_bar()
    if device is not None:
        pipe.to(checks.device(device))
    return pipe


def pipeline_folder(pipe) -> Path | None:
    """The local folder a pipeline was loaded from (where its shipped artefacts sit beside the weights), if any."""
    folder = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return Path(folder) if folder and Path(folder).is_dir() else None


def shipped_folder() -> Path:
    """Where the artefacts that ship with cachepilot live (toy-wan's weights, its policies, published calibrations)."""
    return Path(str(resources.files("cachepilot.checkpoints")))


def check_output(path: str | Path, force: bool = False, weights: str | Path | None = None) -> Path:
    """Refuse to replace a shipped artefact (anything under `shipped_folder()`, or under the model's own weights
    folder `weights`) unless `force`; writing a new file there is fine."""
    path = Path(path)
    if force or not path.exists():
        return path
    resolved = path.resolve()
    for folder in (shipped_folder(), *([Path(weights)] if weights else [])):
        if resolved.is_relative_to(folder.resolve()):
            raise InvalidInputError(f"{path} is a shipped artefact (in {folder}); write elsewhere with --out, or pass "
                                    "--force to replace it")
    return path
