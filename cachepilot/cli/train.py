"""`cachepilot train`: a cache policy for a model, by distillation from the oracle or by PPO; prints its validation
table. The command builds the `RunSpec` (what is trained on) and the algorithm's config (how), then learns."""

from __future__ import annotations

from cachepilot.errors import InvalidInputError

from .common import (COUNT, COUNT0, FOLDER, GUIDANCES, RUNS, SEED, STEP_COUNTS, add_model_arguments,
                     add_process_arguments, add_setting_arguments, budgets, budgets_or_none, devices, model_source,
                     processes, prompts_for)

HELP = "train a cache policy (distillation from the oracle, or PPO) and save it"

# The settings a policy is trained over by default: what users of video DiTs run (20 to 100 steps, guidance 3 to 8),
# and 10 steps and guidance 2 for the short and weak ends. --steps and --guidance are the primary setting.
TRAIN_STEPS = (10, 20, 30, 50, 75, 100)
TRAIN_GUIDANCE = (2, 3, 5, 7, 8)

# Flags of one algorithm only, with their defaults: given with the other algorithm they are refused, not ignored.
ALGORITHM_FLAGS = {
    "distill": {"rounds": 2, "patience": 1, "relabel": "reference", "searched_budgets": (0.15,), "epochs": 200,
                "val_every": 50},
    "ppo": {"timesteps": 12_000, "init_from": None, "fresh": False, "env_group": None},
}


def add_arguments(p) -> None:
    add_model_arguments(p, "one prompt per line (real models): the first --pairs train, the next --val-pairs validate")
    p.add_argument("--algo", choices=["distill", "ppo"], default="distill")
    p.add_argument("--out", type=FOLDER, help="policy directory (default: runs/<model>/policy-<algo>)")
    p.add_argument("--force", action="store_true", help="replace a shipped policy (one beside the model's weights)")
    p.add_argument("--run-dir", type=FOLDER, help="oracle tables, rollouts, checkpoints, TensorBoard logs (default: "
                   "<out>.run); a rerun resumes from it")
    add_setting_arguments(p)
    p.add_argument("--train-steps", type=STEP_COUNTS, default=TRAIN_STEPS,
                   help="step counts to train over, each at --guidance (default 10,20,30,50,75,100; --steps is "
                   "always among them: --train-steps equal to --steps and --train-guidance equal to --guidance train at "
                   "one setting)")
    p.add_argument("--train-guidance", type=GUIDANCES, default=TRAIN_GUIDANCE,
                   help="guidance scales to train over, each at --steps (default 2,3,5,7,8)")
    p.add_argument("--pairs", type=COUNT, default=16, help="training (prompt, seed) pairs from the train split")
    p.add_argument("--val-pairs", type=COUNT, default=8)
    p.add_argument("--budgets", type=budgets, default="0.15,0.2,0.3,0.4,0.5,0.6",
                   help="distill: the budgets each pair is rolled out at; ppo: their range is drawn from")
    p.add_argument("--rounds", type=COUNT0, help="distill: DAgger rounds after the oracle's own (default 2)")
    p.add_argument("--patience", type=COUNT0, help="distill: DAgger stops after this many rounds whose student is no "
                   "better on the val pairs than the best so far (default 1; 0: every round runs)")
    p.add_argument("--relabel", choices=["reference", "reached"],
                   help="distill: DAgger costs the segment under way from the oracle's table (reference, the default) "
                   "or measures it from the state the student reached (real forks of its trajectory; slower)")
    p.add_argument("--searched-budgets", type=budgets_or_none,
                   help="distill: those of --budgets taught by one schedule searched with real rollouts on train pairs "
                   "instead of the DP (default 0.15; about 4 minutes each on 2 cores for toy-wan; none: the DP "
                   "everywhere)")
    p.add_argument("--epochs", type=COUNT, help="distill: epochs per round (default 200)")
    p.add_argument("--val-every", type=COUNT, help="distill: epochs between real-generation scores of the student on "
                   "the val pairs (default 50; 1: every epoch; each costs a few seconds)")
    p.add_argument("--timesteps", type=COUNT, help="ppo: environment steps in total (default 12000); a rerun may ask "
                   "for more to train on")
    p.add_argument("--init-from", help="ppo: warm-start the actor from this policy file (e.g. the distilled one)")
    p.add_argument("--fresh", action="store_true", default=None, help="ppo: delete the run folder's checkpoint and "
                   "start over (a rerun otherwise resumes it, and refuses other settings than it was made with)")
    p.add_argument("--num-envs", type=COUNT, default=8, help="episodes run in one batch")
    p.add_argument("--references", type=FOLDER, help="reference store folder (default: $CACHEPILOT_REFERENCES or "
                   "~/.cache)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--env-group", type=COUNT, help="ppo: environments per batched generation (default: all of them, "
                   "split over the processes; the same group gives the same run on any number of processes)")
    add_process_arguments(p)


def algorithm_flags(args) -> None:
    """Refuse the flags of the other algorithm; fill in the defaults of this one's."""
    for algo, flags in ALGORITHM_FLAGS.items():
        for name, default in flags.items():
            given = getattr(args, name)
            if algo != args.algo and given is not None:
                raise InvalidInputError(f"--{name.replace('_', '-')} applies to --algo {algo}, not {args.algo}")
            if given is None:
                setattr(args, name, default)


def prompt_pairs(args, family: str) -> tuple:
    """Training and validation prompts: toy-wan's splits, or a prompts file's first --pairs prompts and the
    --val-pairs after them (pair i takes seed i, so the two sets must not share prompts)."""
    prompts, train, val = prompts_for(args, family, "train", "train"), args.pairs, args.val_pairs
    if isinstance(prompts, str):
        return prompts, "val"
    if len(prompts) < train + val:
        raise InvalidInputError(f"{args.prompts_file} has {len(prompts)} prompts; --pairs {train} and --val-pairs {val} "
                                f"need {train + val} (the first for training, the rest for validation)")
    return tuple(prompts[:train]), tuple(prompts[train : train + val])


def run_spec(args):
    """What the command trains on."""
    from cachepilot.envs.spec import RunSpec, Setting, setting_cross  # imported when run (cachepilot.cli)
    from cachepilot.models.registry import get_spec

    prompts, val_prompts = prompt_pairs(args, get_spec(args.model).family)
    settings = setting_cross(args.train_steps, args.train_guidance, Setting(args.steps, args.guidance))
    return RunSpec(model_source(args), prompts, args.pairs, val_prompts, args.val_pairs, args.steps, args.guidance,
                   args.budgets, args.references, settings)


def trainer(args, spec, run_dir, shard):
    """The algorithm's trainer, with its config from the flags, on this process's `shard` of the run."""
    # imported when run (cachepilot.cli)
    from cachepilot.train.distill import DistillConfig, Distiller
    from cachepilot.train.rl import PPOConfig, PPOTrainer

    if args.algo == "distill":
        config = DistillConfig(dagger_rounds=args.rounds, dagger_patience=args.patience, epochs=args.epochs,
                               num_envs=args.num_envs, seed=args.seed, student_val_every=args.val_every,
                               relabel=args.relabel,
                               searched_budgets=args.searched_budgets,
                               trainer={"accelerator": args.accelerator, "devices": devices(args.devices),
                                        "num_nodes": args.num_nodes, "strategy": args.strategy})
        return Distiller(spec, config, run_dir, shard=shard)
    config = PPOConfig(total_timesteps=args.timesteps, num_envs=args.num_envs, init_from=args.init_from, seed=args.seed,
                       env_group=args.env_group)
    return PPOTrainer(spec, config, run_dir, shard=shard)


def run(args) -> int:
    from cachepilot.models.registry import check_output, weights_path  # imported when run (cachepilot.cli)
    from cachepilot.train.trainer import run_folder

    algorithm_flags(args)
    spec = run_spec(args)
    out = check_output(args.out or RUNS / args.model / f"policy-{args.algo}", args.force,
                       weights_path(args.model, args.model_path))
    processes(args).launch(_learn, args, spec, run_folder(out, args.run_dir), out)
    return 0


def _learn(shard, args, spec, run_dir, out) -> None:
    """Learn on this process (one of the run's, or the only one), and save from the first."""
    chosen = trainer(args, spec, run_dir, shard)
    chosen.learn(**({"fresh": args.fresh} if args.algo == "ppo" else {}))
    if shard.rank != 0:
        return
    bundle = chosen.save(out)
    print(f"policy saved to {out} ({bundle.net.num_parameters} parameters, "
          f"{bundle.card.training['wall_minutes']} min)")
