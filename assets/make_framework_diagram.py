"""Draw the project's own STeCa framework diagram into ``assets/framework.png`` (matplotlib only).

    python assets/make_framework_diagram.py [--output assets/framework.png]

Boxes are the pipeline's stages (the folder that runs each one in brackets), arrows are the files
that flow between them. The layout follows the data flow of docs/architecture.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

# name: (x, y, w, h, text, colour)
BOXES = {
    "expert": (0.2, 6.2, 2.6, 1.1, "Expert trajectories\n(authors' data or\ngenerated mini benchmark)", "#dfe7f3"),
    "sft": (3.6, 6.2, 2.6, 1.1, "Stage 1: SFT warm-up\nbehaviour cloning\n[sft/]  ->  pi_base", "#cfe3cf"),
    "expstep": (7.0, 7.0, 3.2, 1.0, "expert step a*_t after prefix t-1\nN rollouts -> r_expert(t)", "#fbe5c8"),
    "expl": (7.0, 5.5, 3.2, 1.0, "explored step â_t = pi_base(prefix)\nN rollouts -> r_explore(t)", "#fbe5c8"),
    "mc_title": (7.0, 8.15, 3.2, 0.55, "Stage 2: Monte Carlo step rewards [sampling/]", None),
    "dev": (0.1, 3.2, 2.9, 1.3, "Deviation detection\nr_explore(t) - r_expert(t-1) <= delta\n(+ released filters)", "#f6d5d5"),
    "refl": (3.75, 3.2, 2.7, 1.3, "Reflection (LLM)\nthought that notices the mistake\nand leads to a*_t", "#f6d5d5"),
    "sets": (7.1, 3.0, 3.1, 1.7, "Training pairs [data_collection/]\nD_c calibrated trajectories\nD_e explored successes\n"
             "D_s expert sub-trajectories\nweight 1 ± c·DTW distance", "#e8dcf2"),
    "rl": (3.4, 0.5, 3.2, 1.3, "Stage 4: reinforced training from pi_base\nreward · [-log σ(β·Δ) - log π(chosen)]\n[Reinfoced_train/]", "#cfe3cf"),
    "eval": (7.3, 0.5, 2.9, 1.3, "Stage 5: evaluation [eval/]\nseen / unseen success rate\nSFT vs baseline vs STeCa", "#dfe7f3"),
}

# (from, to, label)
ARROWS = [
    ("expert", "sft", "SFT file"),
    ("sft", "expstep", ""),
    ("sft", "expl", "base model"),
    ("expl", "dev", "step records + rewards"),
    ("dev", "refl", "deviated step t"),
    ("refl", "sets", "calibrated turn"),
    ("expstep", "sets", ""),
    ("sets", "rl", "merged pair file"),
    ("rl", "eval", "STeCa agent"),
]


def _anchor(box: tuple, toward: tuple) -> tuple[float, float]:
    """The point on ``box``'s border facing the centre of ``toward``."""
    x, y, w, h = box[:4]
    cx, cy = x + w / 2, y + h / 2
    tx, ty = toward[0] + toward[2] / 2, toward[1] + toward[3] / 2
    dx, dy = tx - cx, ty - cy
    if abs(dx) * h >= abs(dy) * w:
        return (x + w if dx > 0 else x, cy)
    return (cx, y + h if dy > 0 else y)


def draw(output: Path) -> Path:
    fig, ax = plt.subplots(figsize=(11, 7.6))
    ax.set_xlim(0, 10.5)
    ax.set_ylim(0, 9)
    ax.axis("off")
    ax.add_patch(FancyBboxPatch((6.85, 5.3), 3.5, 3.5, boxstyle="round,pad=0.05", fc="#fff8ee", ec="#d9a35f", lw=1))
    for name, (x, y, w, h, text, colour) in BOXES.items():
        if colour is None:
            ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=9, weight="bold")
            continue
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.06", fc=colour, ec="#555555", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5)
    for a, b, label in ARROWS:
        p0, p1 = _anchor(BOXES[a], BOXES[b]), _anchor(BOXES[b], BOXES[a])
        ax.add_patch(FancyArrowPatch(p0, p1, arrowstyle="-|>", mutation_scale=14, color="#333333", lw=1.2,
                                     connectionstyle="arc3,rad=0.05"))
        if label:
            ax.text((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2 + 0.12, label, ha="center", va="bottom", fontsize=7.5,
                    color="#333333", bbox=dict(fc="white", ec="none", alpha=0.8, pad=0.5))
    ax.set_title("STeCa: step-level trajectory calibration (this reimplementation's pipeline)", fontsize=12)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default=str(Path(__file__).resolve().parent / "framework.png"))
    args = ap.parse_args()
    draw(Path(args.output))


if __name__ == "__main__":
    main()
