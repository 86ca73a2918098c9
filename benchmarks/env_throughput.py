"""Environment throughput on toy-wan (CPU): BatchedCacheEnv(N) vs a DummyVecEnv of N CacheEnvs.

Both run the same episodes (same seeds, 50 steps, guidance 5) with random valid actions, after their
references are built; reported: environment steps per second summed over the N episodes. Target: the
batched env >= 3x at N = 8.

Also reported: what batching can give at most on this machine. The bare transformer (no cache, no env)
is timed at batch 1 and batch N; the ratio of its per-sample costs bounds the speed-up of an env that
did nothing but call the transformer. On a CPU that is compute-bound at batch 1 it is close to 1.
Last, the same batch-1 call on a second OS thread: why the environments run the pipeline as a greenlet on
the caller's thread rather than on a worker thread (envs/lockstep.py).

    python benchmarks/env_throughput.py [--envs 8] [--episodes 2] [--steps 50]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import tempfile
import threading
import time

import numpy as np
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from cachepilot.envs import BatchedCacheEnv, CacheEnv, ReferenceStore, RunSpec
from cachepilot.models.registry import load_pipeline
from cachepilot.provenance import machine_summary


def steps_per_second(venv, episodes: int, steps: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    venv.seed(seed)
    venv.reset()
    start = time.perf_counter()
    for _ in range(episodes * steps):
        masks = np.stack(venv.env_method("action_masks"))
        venv.step(np.array([rng.choice(np.flatnonzero(m)) for m in masks]))
    return venv.num_envs * episodes * steps / (time.perf_counter() - start)


def per_sample_ms(transformer, batches: tuple[int, ...], rounds: int = 5, calls: int = 5) -> list[float]:
    """Per batch size, milliseconds per sample of one bare transformer call (toy-wan shapes): the fastest of
    `rounds` rounds, the sizes alternating, since a VM's noise only ever adds time."""
    channels = transformer.config.in_channels  # the latent, plus position channels where the model takes them
    inputs = {b: (torch.randn(b, channels, 8, 16, 16), torch.full((b,), 500.0), torch.randn(b, 24, 64)) for b in batches}
    best = dict.fromkeys(batches, float("inf"))
    with torch.no_grad():
        for b in batches:
            transformer(*inputs[b], return_dict=False)  # warm-up
        for _ in range(rounds):
            for b in batches:
                start = time.perf_counter()
                for _ in range(calls):
                    transformer(*inputs[b], return_dict=False)
                best[b] = min(best[b], (time.perf_counter() - start) / calls / b * 1000)
    return [best[b] for b in batches]


def on_worker_thread_ms(transformer) -> float:
    """`per_sample_ms` at batch 1, measured on a fresh thread while this (main) thread has run torch before."""
    result = []
    worker = threading.Thread(target=lambda: result.extend(per_sample_ms(transformer, (1,))))
    worker.start()
    worker.join()
    return result[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="cachepilot-refs-")
    pipes = [load_pipeline("toy-wan") for _ in range(args.envs)]
    spec = RunSpec(pairs=args.envs * (args.episodes + 1), steps=args.steps, budgets=(0.2, 0.6), references=root)
    ReferenceStore(pipes[0], "toy-wan", args.steps, 5.0, root).get_many(spec.pair_list())
    single = DummyVecEnv([lambda p=p: CacheEnv(replace(spec, pipe=p)) for p in pipes])
    batched = BatchedCacheEnv(replace(spec, pipe=pipes[0]), num_envs=args.envs)
    rate_single = steps_per_second(single, args.episodes, args.steps)
    single.close()
    rate_batched = steps_per_second(batched, args.episodes, args.steps)
    batched.close()
    bare_1, bare_n = per_sample_ms(pipes[0].transformer, (1, args.envs))
    print(f"machine: {machine_summary()}")
    print(f"{'environment':<32} {'env steps/s':>12}")
    print(f"{f'DummyVecEnv of {args.envs} CacheEnv':<32} {rate_single:>12.1f}")
    print(f"{f'BatchedCacheEnv({args.envs})':<32} {rate_batched:>12.1f}")
    print(f"speed-up: {rate_batched / rate_single:.2f}x (target >= 3x)")
    print(f"bare transformer, fastest ms per sample: {bare_1:.1f} at batch 1, {bare_n:.1f} at batch {args.envs}: "
          f"batching alone can give {bare_1 / bare_n:.2f}x on this machine")
    print(f"the batch-1 call on a worker thread: {on_worker_thread_ms(pipes[0].transformer):.1f} ms per sample")


if __name__ == "__main__":
    main()
