"""What `cachepilot ablate` writes: results.csv / results.json (one row per method, knob and pair), a
markdown table of the Pareto-relevant points, pareto.png and a side-by-side GIF (reference | each method).

Speedups: FLOPs speedup is 1 / (mean computed fraction), i.e. total uncached over total cached transformer
FLOPs; wall speedup is the reference batch's transformer wall time over the run's, on this machine.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from cachepilot.io import atomic_write_bytes, atomic_write_text
from cachepilot.provenance import machine_summary
from cachepilot.video import save_video

from .compare import by_method, speed_table
from .config import Entry, Kind, Run

KIND_ORDER = {kind: i for i, kind in enumerate(Kind)}
HINDSIGHT = (Kind.ORACLE, Kind.DP)  # schedules chosen per pair knowing its reference: not methods one can deploy


@dataclass
class Point:
    """One run's means: what the table and the plot show."""

    method: str
    kind: str
    knob_name: str
    knob: float
    computed_fraction: float
    flops_speedup: float
    wall_speedup: float
    psnr: float
    ssim: float
    lpips: float | None
    key: str = ""  # the run's (Entry.key)
    label: str = ""  # its knobs, "name=value, ..."
    own_front: bool = False  # not dominated by another knob of the same method
    global_front: bool = False  # not dominated by any deployable method (the oracles are not methods)

    @property
    def knob_label(self) -> str:
        return "-" if self.kind == Kind.REFERENCE else self.label


def _mean_psnr(values) -> float:
    values = [math.inf if v >= 1e9 else v for v in values]  # stored identical-to-reference marker
    return math.inf if any(math.isinf(v) for v in values) else float(np.mean(values))


def points(runs, reference_wall: float) -> list[Point]:
    found = []
    for run in runs:
        fraction = float(np.mean(run.computed_fraction))
        found.append(Point(run.entry.method, run.entry.kind, run.entry.knob_name, run.entry.knob, fraction, 1 / fraction,
                           reference_wall / run.wall if run.wall > 0 else math.nan, _mean_psnr(run.psnr),
                           float(np.mean(run.ssim)), float(np.mean(run.lpips)) if run.lpips else None, run.entry.key,
                           run.entry.label))
    _mark_fronts(found)
    return sorted(found, key=lambda p: (KIND_ORDER[p.kind], p.method, p.flops_speedup))


def _dominated(p: Point, others) -> bool:
    return any(q is not p and q.flops_speedup >= p.flops_speedup and q.psnr >= p.psnr
               and (q.flops_speedup > p.flops_speedup or q.psnr > p.psnr) for q in others)


def _mark_fronts(found: list[Point]) -> None:
    deployable = [p for p in found if p.kind not in HINDSIGHT]
    for p in found:
        p.own_front = not _dominated(p, [q for q in found if q.method == p.method])
        p.global_front = p.kind not in HINDSIGHT and not _dominated(p, deployable)


def _fmt_psnr(value: float) -> str:
    return "lossless" if math.isinf(value) else f"{value:.2f}"


def pareto_table(found: list[Point]) -> str:
    """Each method's own frontier (the knobs worth choosing); ★ marks the frontier across all methods."""
    lines = ["| method | knob | computed fraction | FLOPs speedup | wall speedup | PSNR dB | SSIM | LPIPS | front |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in found:
        if not p.own_front:
            continue
        lpips = "-" if p.lpips is None else f"{p.lpips:.4f}"
        mark = "★" if p.global_front else ("limit" if p.kind == Kind.ORACLE else "")
        lines.append(f"| {p.method} | {p.knob_label} | {p.computed_fraction:.3f} | {p.flops_speedup:.2f}x | "
                     f"{p.wall_speedup:.2f}x | {_fmt_psnr(p.psnr)} | {p.ssim:.4f} | {lpips} | {mark} |")
    return "\n".join(lines)


def plot_pareto(found: list[Point], title: str) -> bytes:
    """PSNR vs FLOPs speedup: one curve per method through its own front (the other settings as faint dots), the
    oracles dashed."""
    fig = Figure(figsize=(9, 5.5), dpi=110)  # no pyplot: nothing global (backend, open figures) is touched
    ax = fig.subplots()
    methods = dict.fromkeys(p.method for p in found if p.kind != Kind.REFERENCE)
    ax.set_prop_cycle(color=[colormaps["tab20"](i % 20) for i in range(len(methods))])
    for method in methods:
        mine = sorted((p for p in found if p.method == method), key=lambda p: p.flops_speedup)
        kind = mine[0].kind
        style = {Kind.ORACLE: dict(color="black", linestyle="--", marker="x", linewidth=1.5),
                 Kind.DP: dict(color="gray", linestyle="--", marker="+", linewidth=1.0),
                 Kind.LEARNED: dict(linestyle="-", marker="o", linewidth=2.5),
                 Kind.PEER: dict(linestyle=":", marker="s", linewidth=1.2)}.get(kind, dict(linestyle="-", marker=".", linewidth=1.2))
        label = f"{method} (limit)" if kind == Kind.ORACLE else method
        front = [p for p in mine if p.own_front]
        line, = ax.plot([p.flops_speedup for p in front], [p.psnr for p in front], label=label, **style)
        rest = [p for p in mine if not p.own_front]
        if rest:
            ax.plot([p.flops_speedup for p in rest], [p.psnr for p in rest], linestyle="none", marker=".",
                    markersize=3, alpha=0.4, color=line.get_color())
    ax.set_xlabel("FLOPs speedup (uncached / cached transformer FLOPs)")
    ax.set_ylabel("PSNR vs uncached output (dB)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def gif_columns(found: list[Point], budget: float) -> list[Point]:
    """The reference, then for each method its point whose computed fraction is closest to `budget`."""
    columns = [p for p in found if p.kind == Kind.REFERENCE]
    for method in dict.fromkeys(p.method for p in found if p.kind != Kind.REFERENCE):
        mine = [p for p in found if p.method == method]
        columns.append(min(mine, key=lambda p: (abs(p.computed_fraction - budget), -p.psnr)))
    return columns


def side_by_side(videos: list[np.ndarray], labels: list[tuple[str, str]], scale: int = 7) -> np.ndarray:
    """Frames (T, H, W, 3) in [0, 1]: one column per method (labelled on top), one row per pair.
    `videos[c]` holds column c's pairs: (pairs, T, h, w, 3)."""
    pairs, frames, h, w, _ = videos[0].shape
    cell_w, cell_h, header, gap = w * scale, h * scale, 26, 2
    width = len(videos) * (cell_w + gap)
    out = np.ones((frames, header + pairs * (cell_h + gap), width, 3), dtype=np.float32)
    banner = Image.new("RGB", (width, header), "white")
    draw = ImageDraw.Draw(banner)
    try:
        font = ImageFont.load_default(size=10)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    for c, (top, bottom) in enumerate(labels):
        draw.text((c * (cell_w + gap) + 2, 1), top, fill="black", font=font)
        draw.text((c * (cell_w + gap) + 2, 13), bottom, fill="black", font=font)
    out[:, :header] = np.asarray(banner, dtype=np.float32) / 255
    for c, video in enumerate(videos):
        big = np.clip(video, 0, 1).repeat(scale, axis=2).repeat(scale, axis=3)
        for r in range(pairs):
            y, x = header + r * (cell_h + gap), c * (cell_w + gap)
            out[:, y : y + cell_h, x : x + cell_w] = big[r]
    return out


def read_results(path: Path) -> list[Run]:
    """The runs of a stored results.csv (per-pair scores; each run's wall time relative to the reference's): a
    report's comparisons can be read again without generating anything."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["method"], row["knobs"]), []).append(row)
    runs = []
    for (method, label), group in grouped.items():
        first = group[0]
        settings = [item.split("=") for item in label.split(", ")] if first["kind"] != Kind.REFERENCE else []
        extra = tuple((name, float(value)) for name, value in settings if name != first["knob_name"])
        wall = float(first["wall_speedup"]) if first["wall_speedup"] else 0.0
        runs.append(Run(Entry(method, float(first["knob"]), Kind(first["kind"]), first["knob_name"], extra),
                        [float(r["computed_fraction"]) for r in group],
                        [float(r["psnr"]) if r["psnr"] else 1e9 for r in group],  # empty: identical to the reference
                        [float(r["ssim"]) for r in group],
                        [float(r["lpips"]) for r in group] if first["lpips"] else None,
                        1 / wall if wall > 0 else 0.0))
    return runs


def write_report(out: Path, setting, runs) -> list[Point]:
    config = setting.config
    found = points(runs, setting.reference_wall)
    machine = machine_summary()
    about = {"model": config.model, "model_hash": setting.model_hash, "split": config.split, "pairs": config.pairs,
             "steps": config.steps, "guidance": config.guidance, "machine": machine,
             "reference_transformer_wall_s": setting.reference_wall,
             "lpips": setting.lpips_note or "AlexNet LPIPS (lpips package)"}
    rows = []
    for run in runs:
        fraction = float(np.mean(run.computed_fraction))
        for i, (prompt, seed) in enumerate(zip(setting.prompts, setting.seeds)):
            rows.append({"method": run.entry.method, "kind": run.entry.kind, "knob_name": run.entry.knob_name,
                         "knob": run.entry.knob, "knobs": run.entry.label, "prompt": prompt, "seed": seed,
                         "computed_fraction": run.computed_fraction[i], "flops_speedup": 1 / run.computed_fraction[i],
                         "wall_speedup": setting.reference_wall / run.wall if run.wall > 0 else None,
                         "batch_flops_speedup": 1 / fraction,
                         "psnr": None if run.psnr[i] >= 1e9 else run.psnr[i], "ssim": run.ssim[i],
                         "lpips": run.lpips[i] if run.lpips else None})
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", text.getvalue())
    summary = [{**{k: v for k, v in p.__dict__.items()}, "psnr": None if math.isinf(p.psnr) else p.psnr} for p in found]
    atomic_write_text(out / "results.json", json.dumps({"setting": about, "summary": summary, "pairs": rows},
                                                       indent=1, allow_nan=False) + "\n")
    title = (f"{config.model}, {config.pairs} {config.split} pairs, {config.steps} steps, guidance {config.guidance:g}"
             f" ({machine})")
    table = pareto_table(found)
    speed = speed_table(by_method(runs))
    if speed:
        table += ("\n\nSpeed at equal quality: the compute the learned policies' front needs to reach each PSNR level, "
                  "against the front of every other method (the oracles left out):\n\n" + speed)
    atomic_write_text(out / "table.md", f"{title}\n\n{table}\n\n{setting.lpips_note or ''}\n")
    atomic_write_bytes(out / "pareto.png", plot_pareto(found, title))
    columns = gif_columns(found, config.gif_budget)
    entries = {run.entry.key: run.entry for run in runs}
    videos = [setting.frames(entries[p.key]) for p in columns]
    labels = [(p.method, "reference" if p.kind == Kind.REFERENCE else f"{p.flops_speedup:.1f}x {_fmt_psnr(p.psnr)} dB")
              for p in columns]
    save_video(side_by_side(videos, labels), out / "side_by_side.gif", fps=4, scale=1)
    return found

