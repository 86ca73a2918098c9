"""`cachepilot train-model`: train (or resume) the toy-wan testbed model and export it."""

from __future__ import annotations

from cachepilot.errors import CachepilotError

from .common import COUNT, FOLDER, POSITIVE, RUNS, SEED, SHARE

HELP = "train (or resume training) the toy-wan testbed model and export it"


def add_arguments(p) -> None:
    p.add_argument("model", help="toy-wan")
    p.add_argument("--run-dir", type=FOLDER, default="runs/toy-wan", help="Lightning checkpoints and TensorBoard logs")
    p.add_argument("--out", type=FOLDER, help="where the exported pipeline folder goes (default: runs/<model>/model)")
    p.add_argument("--force", action="store_true", help="replace a shipped model folder (e.g. the installed toy-wan)")
    p.add_argument("--max-steps", type=COUNT, default=20_000, help="total optimiser steps (counting resumed ones)")
    p.add_argument("--batch-size", type=COUNT, default=8)
    p.add_argument("--lr", type=POSITIVE, default=4e-4)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--two-objects", type=SHARE, default=0.5, help="share of two-object training scenes (0 to 1)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--no-resume", action="store_true", help="start from scratch even if the run has a checkpoint")
    p.add_argument("--export-only", action="store_true", help="only export the run's last checkpoint")
    p.add_argument("--init-from", help="without a run checkpoint, warm-start from this exported folder "
                   "(e.g. the shipped toy-wan, see `cachepilot models`) and count its training steps")


def run(args) -> int:
    # imported when run (cachepilot.cli)
    from cachepilot.models.card import update_card
    from cachepilot.models.registry import check_output, get_spec
    from cachepilot.train.toy_model import ToyTrainConfig, export_toy_wan, train_toy_wan

    if get_spec(args.model).family != "toy-wan":
        raise CachepilotError(f"train-model trains the embedded testbed only (toy-wan), not {args.model!r}")
    out = check_output(args.out or RUNS / args.model / "model", args.force)
    if not args.export_only:
        config = ToyTrainConfig(max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                two_objects=args.two_objects)
        train_toy_wan(args.run_dir, config, accelerator=args.accelerator, devices=args.devices,
                      strategy=args.strategy, resume=not args.no_resume, init_from=args.init_from)
    facts = export_toy_wan(args.run_dir, out)
    update_card(out, **toy_wan_card_sections(), training=facts)
    print(f"exported EMA weights after {facts['training_steps']} steps to {out}")
    return 0


def toy_wan_card_sections() -> dict:
    from cachepilot.models.toy_wan import components, scenes  # imported when run (cachepilot.cli)

    return {
        "name": "toy-wan",
        "description": "A small but real diffusers WanTransformer3DModel trained by cachepilot (flow matching, "
        "Wan timestep shift 3.0, 10% prompt dropout for CFG) on synthetic moving-shape videos. "
        "It is cachepilot's embedded default model: everything runs on a CPU with no downloads.",
        "architecture": {k: str(v) for k, v in components.TRANSFORMER_CONFIG.items()}
        | {"video": f"3 x {scenes.NUM_FRAMES} x {scenes.HEIGHT} x {scenes.WIDTH} (the latent is the video, in [-1, 1])",
           "position channels": f"{components.POSITION_CHANNELS} fixed inputs beside the latent: frame, row, column in [-1, 1]",
           "scheduler": "UniPCMultistepScheduler, flow_prediction, flow_shift 3.0", "text_encoder": "ToyPromptEncoder (word embeddings + 1 transformer layer, 64-d, 24 tokens, "
                           f"attention bias by word distance up to {components.TEXT_RELATIVE_DISTANCE}, as T5)"},
        "data": {"colours": ", ".join(scenes.COLOURS), "shapes": ", ".join(scenes.SHAPES),
                 "motions": "left/right/up/down x slowly/quickly, or standing still", "objects": "1 or 2",
                 "backgrounds": ", ".join(scenes.BACKGROUNDS),
                 "splits": ", ".join(f"{s} {len(scenes.load_split(s))} prompts" for s in scenes.SPLITS)},
    }
