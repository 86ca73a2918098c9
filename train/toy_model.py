"""Train toy-wan, the embedded default DiT: flow matching on synthetic moving-shape videos (Lightning).

Why Lightning: training takes hours on a 2-core CPU and minutes on a GPU, so it must resume from its
last checkpoint across sittings and pick up whatever accelerator is there, with TensorBoard logs.
The exported weights are the EMA of the trained ones, saved as a diffusers pipeline folder.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, IterableDataset

from cachepilot.errors import CachepilotError
from cachepilot.io import atomic_directory
from cachepilot.models.card import read_card
from cachepilot.models.registry import write_checksums
from cachepilot.models.toy_wan import components, scenes
from cachepilot.models.toy_wan.pipeline import ToyWanPipeline

from .checkpoints import VerifiedCheckpoint, resumable_checkpoint
from .quiet import silence_third_party_notices


@dataclass
class ToyTrainConfig:
    max_steps: int = 20_000
    batch_size: int = 8
    lr: float = 4e-4
    weight_decay: float = 0.01
    warmup_steps: int = 250
    ema_decay: float = 0.999
    cfg_dropout: float = 0.1  # fraction of prompts replaced by the empty prompt, so CFG works
    flow_shift: float = components.FLOW_SHIFT
    val_every: int = 500
    two_objects: float = 0.5  # share of two-object scenes; raise it once one-object scenes are learned
    seed: int = 0
    prior_steps: int = 0  # steps already behind the weights we start from (warm start from an export)


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's timestep shift: sigma = shift * u / (1 + (shift - 1) * u); spends more training on high noise."""
    return shift * u / (1 + (shift - 1) * u)


def flow_matching_loss(transformer, text_encoder, videos, prompts, sigmas, noise) -> torch.Tensor:
    """Wan's objective: predict v = noise - video from (1 - sigma) * video + sigma * noise at timestep 1000 * sigma."""
    embeds = text_encoder(text_encoder.tokenize(prompts))
    s = sigmas.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * videos + s * noise
    pred = transformer(components.with_position(noisy, transformer.config.in_channels), sigmas * 1000, embeds, return_dict=False)[0]
    return F.mse_loss(pred.float(), (noise - videos).float())


class SceneStream(IterableDataset):
    """An endless stream of (video, prompt) rendered on the fly from a prompt split."""

    def __init__(self, split: str, seed: int, two_objects: float = 0.5):
        self.prompts = scenes.load_split(split)
        self.seed, self.two_objects = seed, two_objects

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 1009 + (info.id if info else 0))
        while True:
            scene = scenes.sample_scene(rng, self.prompts, self.two_objects)
            yield scenes.render(scene, rng), scene.prompt


class FixedScenes(torch.utils.data.Dataset):
    """One deterministic render per prompt of a split (for validation loss)."""

    def __init__(self, split: str, seed: int = 1234):
        rng = random.Random(seed)
        self.items = [(scenes.render(scenes.parse_prompt(p), rng), p) for p in scenes.load_split(split)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class SceneDataModule(L.LightningDataModule):
    def __init__(self, batch_size: int = 16, seed: int = 0, num_workers: int = 0, two_objects: float = 0.5):
        super().__init__()
        self.batch_size, self.seed, self.num_workers, self.two_objects = batch_size, seed, num_workers, two_objects

    def train_dataloader(self):
        stream = SceneStream("train", self.seed, self.two_objects)
        return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers)

    def val_dataloader(self):
        return DataLoader(FixedScenes("val"), batch_size=self.batch_size)


class ToyWanModule(L.LightningModule):
    """Flow matching (v = noise - x0, as Wan) for the transformer and the prompt encoder, with an EMA copy."""

    def __init__(self, **config):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = ToyTrainConfig(**config)
        self.transformer = components.build_transformer()
        self.text_encoder = components.build_text_encoder()
        self.ema = torch.nn.ModuleDict({"transformer": copy.deepcopy(self.transformer), "text_encoder": copy.deepcopy(self.text_encoder)})
        self.ema.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        videos, prompts = batch
        prompts = ["" if random.random() < self.cfg.cfg_dropout else p for p in prompts]
        sigmas = shifted_sigmas(torch.rand(videos.shape[0], device=self.device), self.cfg.flow_shift)
        loss = flow_matching_loss(self.transformer, self.text_encoder, videos, prompts, sigmas, torch.randn_like(videos))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        decay = min(self.cfg.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        with torch.no_grad():
            for name in ("transformer", "text_encoder"):
                for e, p in zip(self.ema[name].parameters(), getattr(self, name).parameters()):
                    e.lerp_(p.detach(), 1 - decay)

    def validation_step(self, batch, batch_idx):
        videos, prompts = batch
        g = torch.Generator().manual_seed(batch_idx)
        sigmas = torch.linspace(0.05, 0.95, videos.shape[0])
        noise = torch.randn(videos.shape, generator=g).to(videos)
        loss = flow_matching_loss(self.ema["transformer"], self.ema["text_encoder"], videos, prompts, sigmas.to(videos), noise)
        self.log("val/loss_ema", loss, prog_bar=True, batch_size=videos.shape[0])

    def configure_optimizers(self):
        params = list(self.transformer.parameters()) + list(self.text_encoder.parameters())
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        warmup = self.cfg.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def load_exported(self, folder: str | Path) -> None:
        """Start from an exported pipeline's weights: both the trained and the EMA copies.

        An export from before the position channels (in_channels 3) is widened with zero weights for them,
        so the warm-started model computes what the export did (to float rounding) and learns to use them.
        An export whose prompt encoder has no word-distance bias gets this model's starting bias."""
        pipe = ToyWanPipeline.from_pretrained(folder)
        for name in ("transformer", "text_encoder"):
            state = getattr(pipe, name).state_dict()
            if name == "transformer":
                state = _widen_patch_embedding(state, self.transformer.config.in_channels)
            elif "relative_bias" not in state and hasattr(self.text_encoder, "relative_bias"):
                state = {**state, "relative_bias": self.text_encoder.relative_bias.detach().clone()}
            getattr(self, name).load_state_dict(state)
            self.ema[name].load_state_dict(state)

    def ema_pipeline(self) -> ToyWanPipeline:
        return ToyWanPipeline(
            text_encoder=copy.deepcopy(self.ema["text_encoder"]).eval().cpu(),
            transformer=copy.deepcopy(self.ema["transformer"]).eval().cpu(),
            scheduler=components.build_scheduler(),
        )


def _widen_patch_embedding(state: dict, in_channels: int) -> dict:
    """Zero-pad the patch embedding's input channels up to `in_channels` (new inputs start with no effect)."""
    weight = state["patch_embedding.weight"]
    missing = in_channels - weight.shape[1]
    if missing > 0:
        pad = weight.new_zeros(weight.shape[0], missing, *weight.shape[2:])
        state = {**state, "patch_embedding.weight": torch.cat([weight, pad], dim=1)}
    return state


def last_checkpoint(run_dir: Path) -> tuple[Path, dict] | None:
    """The run's last Lightning checkpoint and its content; None without one, or when it is damaged (then it is set
    aside and training starts from the weights it would start from without it)."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    state = resumable_checkpoint(path)
    return None if state is None else (path, state)


def train_toy_wan(
    run_dir: str | Path = "runs/toy-wan",
    config: ToyTrainConfig | None = None,
    accelerator: str = "auto",
    devices: str | int = "auto",
    strategy: str = "auto",
    precision: str | None = None,
    resume: bool = True,
    init_from: str | Path | None = None,
) -> ToyWanModule:
    """Train (or resume training) toy-wan; checkpoints and TensorBoard logs go under `run_dir`.

    Resuming from `run_dir`'s last checkpoint restores everything (optimiser, EMA, step). Without one,
    `init_from` warm-starts the weights (and their EMA) from an exported pipeline folder such as
    the shipped toy-wan, so training can go on across machines from the shipped weights alone.
    """
    config = config or ToyTrainConfig()
    silence_third_party_notices()
    run_dir = Path(run_dir)
    ckpt, resumed = (last_checkpoint(run_dir) if resume else None) or (None, {})
    resumed_step = resumed.get("global_step", 0)
    if resumed:  # a resumed warm start keeps counting the steps behind the weights it started from
        config.prior_steps = int(resumed.get("hyper_parameters", {}).get("prior_steps", 0))
    L.seed_everything(config.seed + resumed_step, workers=True)  # a fresh data stream after each resume
    if ckpt is None and init_from is not None:
        config.prior_steps = int(read_card(init_from).get("training", {}).get("training_steps", 0))
    module = ToyWanModule(**asdict(config))
    if ckpt is None and init_from is not None:
        module.load_exported(init_from)
    datamodule = SceneDataModule(batch_size=config.batch_size, seed=config.seed + resumed_step, two_objects=config.two_objects)
    if precision is None:
        precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_steps=config.max_steps,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        val_check_interval=config.val_every,
        check_val_every_n_epoch=None,
        logger=TensorBoardLogger(run_dir, name="tb", version=0),
        callbacks=[VerifiedCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, every_n_train_steps=100, save_top_k=0,
                                   enable_version_counter=False)],
        log_every_n_steps=10,
        gradient_clip_val=1.0,
        enable_progress_bar=True,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    return module


def load_module(run_dir: str | Path) -> tuple[ToyWanModule, dict]:
    """Load the last training checkpoint of a run (for export)."""
    found = last_checkpoint(Path(run_dir))
    if found is None:
        raise CachepilotError(f"no checkpoint at {Path(run_dir) / 'checkpoints' / 'last.ckpt'}; train first")
    state = found[1]
    module = ToyWanModule(**state["hyper_parameters"])
    module.load_state_dict(state["state_dict"])
    return module, {"global_step": state["global_step"], "callbacks": state.get("callbacks", {})}


def _smoothed_loss(run_dir: Path) -> float | None:
    """Mean of the last logged training losses, read back from TensorBoard."""
    acc = EventAccumulator(str(run_dir / "tb" / "version_0"))
    acc.Reload()
    if "train/loss" not in acc.Tags().get("scalars", []):
        return None
    values = [e.value for e in acc.Scalars("train/loss")][-50:]
    return sum(values) / len(values) if values else None


def export_toy_wan(run_dir: str | Path, out_dir: str | Path) -> dict:
    """Write the EMA weights of a run as a diffusers pipeline folder with its manifest (atomically); return training
    facts."""
    run_dir = Path(run_dir)
    module, facts = load_module(run_dir)
    pipe = module.ema_pipeline()
    with atomic_directory(out_dir) as tmp:
        pipe.save_pretrained(tmp)
        write_checksums(tmp)  # an export is verified as a whole wherever it is loaded
    loss = _smoothed_loss(run_dir)
    return {"training_steps": module.cfg.prior_steps + facts["global_step"], "final_train_loss": None if loss is None or math.isnan(loss) else round(loss, 4),
            "batch_size": module.cfg.batch_size, "lr": module.cfg.lr}
