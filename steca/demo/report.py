"""The demo's report: ``results.md`` of a run, the seeds report over several runs, and their PNG plots.

``python -m steca.demo report --run_dir R`` and ``python -m steca.demo seeds --output O R1 R2 ...`` call
:func:`write_report` and :func:`write_seed_report`; the tables and the statistics come from
:mod:`steca.demo.comparison`. The plots copied into ``assets/`` are the ones of the command the README's
results come from (``--assets_dir``), so the two always match.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

from steca.demo.comparison import cell_stats, comparison_sections, format_table
from steca.demo.results import (COLUMNS, ENVIRONMENTS, MISSING, Column, Environment, RunResults, environment_of, load_results,
                                method_rows)
from steca.demo.stage_markers import StageTiming, read_timings
from steca.records import load_steps

logger = logging.getLogger(__name__)


def step_reward_curve(steps_path: str | os.PathLike) -> dict[int, tuple[float, int]]:
    """``{t: (mean step reward over trajectories, count)}`` of the scored records in a step file."""
    acc: dict[int, list[float]] = defaultdict(list)
    for r in load_steps(steps_path).records:
        if r.mc_step_reward is not None:
            acc[r.iteration].append(r.mc_step_reward)
    return {t: (sum(v) / len(v), len(v)) for t, v in sorted(acc.items())}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plotted_columns(per_run: Sequence[RunResults]) -> list[Column]:
    """The columns that at least one row of one run has a result for, in table order (the plot's groups)."""
    return [c for c in COLUMNS if any(c.key in cols for r in per_run for cols in r.values())]


def _copy_unless_same(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest``; nothing to do when they are one file (assets_dir is the report's folder)."""
    if dest.exists() and os.path.samefile(src, dest):
        return
    shutil.copyfile(src, dest)


def plot_success(per_run: Sequence[RunResults], path: str | os.PathLike, title: str = "") -> Path:
    """Grouped bars: success (%) per column (x: environment and split) and row (bar), the pooled rate
    over runs with its 95 % interval (:func:`steca.demo.comparison.cell_stats`) as error bar.
    Columns no row has a result for are left out."""
    plt = _pyplot()
    cols = plotted_columns(per_run)
    rows = method_rows(sorted({f for r in per_run for f in r}))
    fig, ax = plt.subplots(figsize=(3 + 2.2 * max(1, len(cols)), 4.5))
    width = 0.8 / max(1, len(rows))
    for k, row in enumerate(rows):
        xs, ys, lo, hi = [], [], [], []
        for i, col in enumerate(cols):
            cell = cell_stats(per_run, row.folder, col.key)
            if cell is None:
                continue
            xs.append(i + (k - (len(rows) - 1) / 2) * width)
            ys.append(100 * cell.mean)
            # matplotlib refuses negative error lengths; a percentile bootstrap interval need not contain the mean
            lo.append(100 * max(0.0, cell.mean - cell.lo))
            hi.append(100 * max(0.0, cell.hi - cell.mean))
        bars = ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=row.label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, label_type="center", rotation=90)
    ax.set_xticks(range(len(cols)), [c.label for c in cols])
    ax.set_ylabel("success rate (%), 95 % interval")
    ax.set_title(title or "CPU mini benchmark: success per split and method")
    # beside the axes, not over them: with ten rows a legend inside covers the first column's bars
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_ylim(0, min(100.0, max(10.0, ax.get_ylim()[1] * 1.15)))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_step_rewards(curves: Mapping[str, Mapping[int, tuple[float, int]]], path: str | os.PathLike) -> Path:
    """Mean Monte Carlo step reward against the step index t, one line per kind of step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for label, curve in curves.items():
        if not curve:
            continue
        ts = sorted(curve)
        ax.plot(ts, [curve[t][0] for t in ts], marker="o", label=f"{label} ({sum(c for _, c in curve.values())} steps)")
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no scored steps", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    ax.set_xlabel("step index t (0-based, along the expert trajectory)")
    ax.set_ylabel("mean Monte Carlo step reward")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Step reward along expert trajectories")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _data_counts(run_dir: Path, env: Environment) -> dict:
    path = run_dir / env.root / "data" / "steca_pairs_summary.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        logger.warning("%s: not JSON; data counts left out", path)
        return {}


def reflection_source(run_dir: str | os.PathLike, env: Environment) -> str | None:
    """Who wrote the D_c reflections of one environment of a run, from its ``data/d_c_summary.json``
    (``settings.reflector``): "offline stand-in (a template, not an LLM)", or the reflector and model as the
    collection stage names them, e.g. "hf:smollm2". None when the run has no D_c summary."""
    path = Path(run_dir) / env.root / "data" / "d_c_summary.json"
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    except ValueError:
        logger.warning("%s: not JSON; reflection source left out", path)
        return None
    if settings.get("reflection_stand_in", False):
        return "offline stand-in (a template, not an LLM)"
    source = str(settings.get("reflector", "unknown"))
    kind, _, model = source.partition(":")
    return f"{kind}:{Path(model).name}" if model else source


def reflection_lines(run_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """One sentence per environment naming the source(s) of STeCa's D_c reflections over the runs."""
    lines = []
    for env in ENVIRONMENTS:
        sources = sorted({s for d in run_dirs if (s := reflection_source(d, env)) is not None})
        if sources:
            lines.append(f"STeCa's D_c reflections, {env.name}: {'; '.join(sources)}.")
    return lines + [""] if lines else []


def _timing_rows(timings: Sequence[StageTiming]) -> list[str]:
    """Stage rows, then one subtotal per environment that has stages, then the total."""
    rows = [f"| {t.name} | {t.wall_s:.0f} | {t.cpu_s:.0f} |" for t in timings]
    for env in ENVIRONMENTS:
        own = [t for t in timings if environment_of(t.name) == env]
        if own and len(own) < len(timings):
            rows.append(f"| {env.name} stages | {elapsed_wall(own):.0f} | {sum(t.cpu_s for t in own):.0f} |")
    rows.append(f"| total (stages run side by side count once) | {elapsed_wall(timings):.0f} | "
                f"{sum(t.cpu_s for t in timings):.0f} |")
    return rows


def write_report(run_dir: str | os.PathLike, assets_dir: str | os.PathLike | None = None) -> str:
    """Write ``<run_dir>/results.md`` and the plots; copy the plots to ``assets_dir`` if given.

    Returns the success table (markdown) so that the caller can print it.
    """
    run = Path(run_dir)
    per_run = [load_results(run)]
    table = format_table(per_run)
    plots = [plot_success(per_run, run / "success.png")]
    curves = {}
    for env in ENVIRONMENTS:
        for label, name in (("expert steps", "expert_steps_mc.jsonl"), ("explored steps", "explore_steps_mc.jsonl")):
            p = run / env.root / "sampling" / name
            if p.is_file():
                curves[f"{env.name} {label}"] = step_reward_curve(p)
    plots.append(plot_step_rewards(curves, run / "step_rewards.png"))

    timings = read_timings(run)
    lines = [f"# STeCa CPU demo: {run.name}", "", *reflection_lines([run]), *comparison_sections(per_run), ""]
    for env in ENVIRONMENTS:
        counts = _data_counts(run, env)
        if not counts:
            continue
        lines += [f"## Training pairs, {env.name}", "", f"{counts.get('pairs', 0)} pairs: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(counts.get("per_set", {}).items())), ""]
        for k, v in sorted(counts.get("per_rule", {}).items()):
            lines.append(f"- {k}: {v}")
        lines.append("")
    if timings:
        lines += ["## Stage times", "", "| stage | wall s | CPU s |", "|---|---|---|", *_timing_rows(timings), ""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    (run / "results.md").write_text("\n".join(lines), encoding="utf-8")
    if assets_dir is not None:
        dest = Path(assets_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for p in plots:
            _copy_unless_same(p, dest / f"demo_{p.name}")
    return table


def elapsed_wall(timings: Sequence[StageTiming]) -> float:
    """Seconds during which at least one stage ran: the length of the union of the intervals
    ``[finished_at - wall_s, finished_at]`` (stages run side by side are counted once)."""
    spans = sorted((t.finished_at - t.wall_s, t.finished_at) for t in timings)
    total, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def write_seed_report(run_dirs: Sequence[str | os.PathLike], output: str | os.PathLike,
                      assets_dir: str | os.PathLike | None = None) -> str:
    """Means over several runs (seeds) with intervals and pooled paired tests into ``output`` (markdown) and
    ``<output stem>.png`` (copied to ``assets_dir/demo_seeds.png`` if given); returns the success table."""
    per_run = [load_results(d) for d in run_dirs]
    table = format_table(per_run)
    out = Path(output)
    seeds = f"{len(per_run)} seed" + ("" if len(per_run) == 1 else "s")
    png = plot_success(per_run, out.with_suffix(".png"),
                       title=f"CPU mini benchmark: mean over {seeds}, 95 % bootstrap interval")
    header = "| run | wall s | CPU s | " + " | ".join(f"{e.name} wall s | {e.name} CPU s" for e in ENVIRONMENTS) + " |"
    timing_rows = [header, "|---" * (3 + 2 * len(ENVIRONMENTS)) + "|"]
    for d in run_dirs:
        ts = read_timings(d)
        cells = [f"{Path(d).name}", f"{elapsed_wall(ts):.0f}", f"{sum(t.cpu_s for t in ts):.0f}"]
        for env in ENVIRONMENTS:
            own = [t for t in ts if environment_of(t.name) == env]
            cells += [f"{elapsed_wall(own):.0f}", f"{sum(t.cpu_s for t in own):.0f}"] if own else [MISSING, MISSING]
        timing_rows.append("| " + " | ".join(cells) + " |")
    text = "\n".join([f"# STeCa CPU demo over {seeds}", "",
                      "Runs: " + ", ".join(Path(d).name for d in run_dirs), "", *reflection_lines(run_dirs),
                      *comparison_sections(per_run), "",
                      "## Stage times", "", *timing_rows, "", f"![seeds]({png.name})", ""])
    out.write_text(text, encoding="utf-8")
    if assets_dir is not None:
        Path(assets_dir).mkdir(parents=True, exist_ok=True)
        _copy_unless_same(png, Path(assets_dir) / "demo_seeds.png")
    return table
