"""Environment throughput on toy-wan (CPU): BatchedCacheEnv(N) vs a DummyVecEnv of N CacheEnvs.

Both run the same episodes (same seeds, 50 steps, guidance 5) with random valid actions, after their
references are built; reported: environment steps per second summed over the N episodes. Target: the
batched env >= 3x at N = 8.

    python benchmarks/env_throughput.py [--envs 8] [--episodes 2] [--steps 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from cachepilot.envs import BatchedCacheEnv, CacheEnv, ReferenceStore
from cachepilot.envs.episodes import make_pairs
from cachepilot.models.registry import load_pipeline


def steps_per_second(venv, episodes: int, steps: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    venv.seed(seed)
    venv.reset()
    start = time.perf_counter()
    for _ in range(episodes * steps):
        masks = np.stack(venv.env_method("action_masks"))
        venv.step(np.array([rng.choice(np.flatnonzero(m)) for m in masks]))
    return venv.num_envs * episodes * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="cachepilot-refs-")
    common = {"pairs": args.envs * (args.episodes + 1), "steps": args.steps, "references": root}
    pipes = [load_pipeline("toy-wan") for _ in range(args.envs)]
    ReferenceStore(pipes[0], "toy-wan", args.steps, 5.0, root).get_many(make_pairs("toy-wan", "train", common["pairs"]))
    single = DummyVecEnv([lambda p=p: CacheEnv(pipe=p, **common) for p in pipes])
    batched = BatchedCacheEnv(args.envs, pipe=pipes[0], **common)
    rate_single = steps_per_second(single, args.episodes, args.steps)
    single.close()
    rate_batched = steps_per_second(batched, args.episodes, args.steps)
    batched.close()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'environment':<32} {'env steps/s':>12}")
    print(f"{f'DummyVecEnv of {args.envs} CacheEnv':<32} {rate_single:>12.1f}")
    print(f"{f'BatchedCacheEnv({args.envs})':<32} {rate_batched:>12.1f}")
    print(f"speed-up: {rate_batched / rate_single:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
