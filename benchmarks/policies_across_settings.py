"""One learned policy across step counts and guidance scales, against every baseline and peer at each setting.

    python benchmarks/policies_across_settings.py [--pairs 16] [--steps 10,20,30,40,50,75] [--guidance 3,5,6,7]
        [--budgets 0.5,0.35,0.25] [--policies checkpoints/toy-wan/policy-distill] [--single PATH] [--methods LIST]
        [--out results/settings]

Every step count runs at guidance 5 and every guidance scale at 50 steps (a cross through the primary setting; the
full grid costs the product). Each setting is one `cachepilot ablate` run of every baseline across its sweep, every
peer, the uniform schedules with and without forecasts and the policies, in its own folder of --out (reused on a
rerun); the oracles are left out (`--oracles` adds them). For each setting and budget it prints the best learned
policy's margin over the best cache that reuses and the best that forecasts, in both views (best knob at or below
the budget; fronts interpolated at the budget), with paired bootstrap 95% CIs, and whether the margins reach the
targets (+1.5 dB over reuse, +1.0 dB over forecasters). Settings no policy was trained at (`--held-out`, default 40
steps and guidance 6) are marked. `--single` names a policy trained at 50 steps and guidance 5 alone, compared with
the general one there.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from cachepilot.evaluation.peers import available_peers
from cachepilot.infer.ablation import UNIFORM, AblationConfig, ablate
from cachepilot.infer.ablation.across import HEADER, VIEWS, margin_row, margins, setting_folder
from cachepilot.infer.ablation.compare import by_method, delta
from cachepilot.infer.ablation.plan import learned_name
from cachepilot.policies.policy_file import load_policy
from cachepilot.policies.registry import BASELINES
from cachepilot.provenance import machine_summary

TARGETS = {"reuse": 1.5, "forecaster": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", default="10,20,30,40,50,75")
    parser.add_argument("--guidance", default="3,5,6,7")
    parser.add_argument("--primary", default="50,5", help="the setting the two lists cross at")
    parser.add_argument("--held-out", default="40,6", help="a step count and a guidance scale not trained on")
    parser.add_argument("--budgets", default="0.5,0.35,0.25")
    parser.add_argument("--policies", default="checkpoints/toy-wan/policy-distill")
    parser.add_argument("--single", help="a policy trained at the primary setting alone")
    parser.add_argument("--oracles", action="store_true")
    parser.add_argument("--methods", help="comma list of the methods compared (default: every baseline, peer and "
                        "uniform schedule)")
    parser.add_argument("--out", default="results/settings")
    args = parser.parse_args()
    steps_list = [int(s) for s in args.steps.split(",")]
    guidance_list = [float(g) for g in args.guidance.split(",")]
    primary = (int(args.primary.split(",")[0]), float(args.primary.split(",")[1]))
    held = (int(args.held_out.split(",")[0]), float(args.held_out.split(",")[1]))
    settings = list(dict.fromkeys([*((s, primary[1]) for s in steps_list), *((primary[0], g) for g in guidance_list)]))
    budgets = tuple(float(b) for b in args.budgets.split(","))
    folders = [p for p in args.policies.split(",") if p] + ([args.single] if args.single else [])
    trained = {f: load_policy(f).card.trained() for f in folders}  # each policy's ranges, read once
    methods = args.methods.split(",") if args.methods else [n for n in BASELINES if n not in ("none", *UNIFORM)] + available_peers() + \
        list(UNIFORM)
    methods += ["oracle", "oracle-dp"] if args.oracles else []
    base = AblationConfig(pairs=args.pairs, budgets=budgets, oracle_budgets=budgets, gif_pairs=1)
    out = Path(args.out)
    print(f"toy-wan, {args.pairs} test pairs; {machine_summary()}")
    rows, checks, single = [], [], None
    single_name = learned_name(args.single) if args.single else None
    for steps, guidance in settings:
        policies = tuple(f for f, ranges in trained.items() if not ranges.outside(steps, guidance))
        config = replace(base, steps=steps, guidance=guidance, policies=policies,
                         methods=",".join(methods + [learned_name(p) for p in policies]))
        grouped = by_method(ablate(config, setting_folder(out, steps, guidance), log=lambda *a: None,
                                   progress=False).runs)
        general = {m: r for m, r in grouped.items() if m != single_name}
        shown = (f"{steps}{' (held out)' if steps == held[0] else ''}",
                 f"{guidance:g}{' (held out)' if guidance == held[1] else ''}")
        for budget, view, name, mine, reuse, ahead in margins(grouped, budgets, general):
            for group, (_, psnr) in (("reuse", reuse), ("forecaster", ahead)):
                checks.append((steps, guidance, budget, view, group,
                               None if psnr is None else float((mine - psnr).mean())))
            rows.append(margin_row(*shown, budget, view, name, mine, reuse, ahead))
            if view == VIEWS[0] and (steps, guidance) == primary and single_name in grouped:
                other = next(r for r in grouped[single_name] if abs(r.entry.knob - budget) < 1e-9)
                single = (single or []) + [(budget, delta(mine, np.array(other.psnr)), np.mean(other.psnr))]
    print("\n" + HEADER)
    print("\n".join(rows))
    print("\nTargets: learned - best reuse >= +1.5 dB and learned - best forecaster >= +1.0 dB (mean over the pairs).")
    for view in VIEWS:
        for group in TARGETS:
            found = [c for c in checks if c[3] == view and c[4] == group and c[5] is not None]
            missed = [c for c in found if c[5] < TARGETS[group]]
            print(f"- {view}, over the best {group}: met at {len(found) - len(missed)} of {len(found)} (setting, budget)"
                  + (": missed at " + ", ".join(f"{s} steps g{g:g} b{b:g} ({m:+.2f})" for s, g, b, _, _, m in missed)
                     if missed else ""))
    if single:
        print(f"\nGeneral vs single-setting policy at {primary[0]} steps, guidance {primary[1]:g}: " + "; ".join(
            f"budget {b:g}: {d} (single {p:.2f} dB)" for b, d, p in single))


if __name__ == "__main__":
    main()
