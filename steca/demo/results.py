"""The demo's results: the paper-layout table (method x {ALFWorld, VirtualHome} x {seen, unseen}),
``results.md`` and PNG plots.

A run folder (``runs/demo_seed0``) holds, per environment, ``<eval dir>/<method>/<split>/summary.json``
(written by ``python -m eval_agent.main``: ``n_tasks``, ``n_success``, ``success_rate``): ALFWorld under
``eval/`` (splits ``dev`` and ``test``), VirtualHome under ``vh/eval/`` (``seen`` and ``unseen``). Next to
them: the Monte Carlo step records ``sampling/`` and ``vh/sampling/{expert,explore}_steps_mc.jsonl``, the
merged training files' summaries and the stage markers (:mod:`steca.demo.stage_markers`; VirtualHome stages are
named ``vh_*``). Everything here only reads those files; a column whose summaries are missing (a run
without the VirtualHome block, an unfinished evaluation) shows ``—``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from steca.demo.stage_markers import StageTiming, read_timings
from steca.records import load_steps

logger = logging.getLogger(__name__)

# (folder under the eval dir, label in the table)
METHODS: tuple[tuple[str, str], ...] = (
    ("sft", "SFT (base agent)"),
    ("sft_more", "SFT + same extra steps on expert data (fair baseline)"),
    ("steca", "STeCa (offline stand-in reflections)"),
)
MISSING = "—"  # a cell whose evaluation summary does not exist


@dataclass(frozen=True)
class Environment:
    """Where one environment's outputs live in a run folder."""

    name: str
    root: str          # folder under the run dir ("" for ALFWorld, "vh" for VirtualHome)
    stage_prefix: str  # prefix of its stage names ("": the stages no other environment claims)


@dataclass(frozen=True)
class Column:
    """One column of the table: an environment's split."""

    key: str
    env: Environment
    split: str  # split folder under <eval dir>/<method>/
    label: str

    def summary_path(self, run_dir: str | os.PathLike, method: str) -> Path:
        return Path(run_dir) / self.env.root / "eval" / method / self.split / "summary.json"


ALFWORLD = Environment("ALFWorld", "", "")
VIRTUALHOME = Environment("VirtualHome", "vh", "vh_")
ENVIRONMENTS: tuple[Environment, ...] = (ALFWORLD, VIRTUALHOME)
# the paper's layout: seen and unseen of each environment
COLUMNS: tuple[Column, ...] = (
    Column("alfworld_seen", ALFWORLD, "dev", "ALFWorld seen"),
    Column("alfworld_unseen", ALFWORLD, "test", "ALFWorld unseen"),
    Column("vh_seen", VIRTUALHOME, "seen", "VirtualHome seen"),
    Column("vh_unseen", VIRTUALHOME, "unseen", "VirtualHome unseen"),
)


def environment_of(stage: str) -> Environment:
    """The environment a stage belongs to, from its name (``vh_*``: VirtualHome; the rest: ALFWorld)."""
    for env in ENVIRONMENTS:
        if env.stage_prefix and stage.startswith(env.stage_prefix):
            return env
    return ALFWORLD


@dataclass(frozen=True)
class SplitResult:
    """Success on one split: ``rate = n_success / n_tasks``."""

    n_tasks: int
    n_success: int

    @property
    def rate(self) -> float:
        return self.n_success / self.n_tasks if self.n_tasks else 0.0


def load_results(run_dir: str | os.PathLike) -> dict[str, dict[str, SplitResult]]:
    """``{method: {column key: SplitResult}}`` from the evaluation summaries of every column.

    Missing summaries are left out (the table shows ``—``); a malformed one raises ``ValueError``
    naming the file and the field.
    """
    out: dict[str, dict[str, SplitResult]] = {}
    for method, _ in METHODS:
        for col in COLUMNS:
            path = col.summary_path(run_dir, method)
            if not path.is_file():
                continue
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ValueError(f"{path}: not JSON ({e})") from e
            for key in ("n_tasks", "n_success"):
                if not isinstance(obj.get(key), int):
                    raise ValueError(f"{path}: field {key!r} missing or not an integer")
            out.setdefault(method, {})[col.key] = SplitResult(obj["n_tasks"], obj["n_success"])
    return out


def _header() -> list[str]:
    return ["| Method | " + " | ".join(c.label for c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]


def format_table(results: Mapping[str, Mapping[str, SplitResult]]) -> str:
    """Markdown table, one row per method, one column per environment and split: ``rate% (wins/tasks)``."""
    lines = _header()
    for method, label in METHODS:
        cells = []
        for col in COLUMNS:
            r = results.get(method, {}).get(col.key)
            cells.append(MISSING if r is None else f"{100 * r.rate:.1f} ({r.n_success}/{r.n_tasks})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """``mean = sum(x)/n`` and sample standard deviation ``sd = sqrt(sum((x-mean)^2)/(n-1))`` (0 for n=1)."""
    if not values:
        raise ValueError("mean_sd of no values")
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1)) if n > 1 else 0.0
    return m, sd


def format_seed_table(per_run: Sequence[Mapping[str, Mapping[str, SplitResult]]]) -> str:
    """Markdown table of ``mean ± sd`` success (%) over runs (seeds), with the per-seed values.

    A cell averages the runs that have that column (a run without the VirtualHome block adds nothing
    to its columns); no run at all gives ``—``.
    """
    lines = _header()
    for method, label in METHODS:
        cells = []
        for col in COLUMNS:
            vals = [100 * r[method][col.key].rate for r in per_run if col.key in r.get(method, {})]
            if not vals:
                cells.append(MISSING)
                continue
            m, sd = mean_sd(vals)
            cells.append(f"{m:.1f} ± {sd:.1f} ({', '.join(f'{v:.1f}' for v in vals)})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_reward_curve(steps_path: str | os.PathLike) -> dict[int, tuple[float, int]]:
    """``{t: (mean step reward over trajectories, count)}`` of the scored records in a step file."""
    acc: dict[int, list[float]] = defaultdict(list)
    for r in load_steps(steps_path).records:
        if r.agent_step_reward is not None:
            acc[r.iteration].append(r.agent_step_reward)
    return {t: (sum(v) / len(v), len(v)) for t, v in sorted(acc.items())}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plotted_columns(results: Mapping[str, Mapping[str, SplitResult]]) -> list[Column]:
    """The columns that at least one method has a result for, in table order (the success plot's groups)."""
    return [c for c in COLUMNS if any(c.key in results.get(m, {}) for m, _ in METHODS)]


def plot_success(results: Mapping[str, Mapping[str, SplitResult]], path: str | os.PathLike,
                 errors: Mapping[str, Mapping[str, float]] | None = None, title: str = "") -> Path:
    """Grouped bars: success (%) per column (x: environment and split) and method (bar); optional error
    bars (sd, in %). Columns no method has a result for are left out."""
    plt = _pyplot()
    cols = plotted_columns(results)
    fig, ax = plt.subplots(figsize=(3 + 2 * max(1, len(cols)), 4))
    width = 0.8 / len(METHODS)
    for k, (method, label) in enumerate(METHODS):
        xs, ys, es = [], [], []
        for i, col in enumerate(cols):
            r = results.get(method, {}).get(col.key)
            if r is None:
                continue
            xs.append(i + (k - (len(METHODS) - 1) / 2) * width)
            ys.append(100 * r.rate)
            es.append((errors or {}).get(method, {}).get(col.key, 0.0))
        bars = ax.bar(xs, ys, width, yerr=es if errors else None, capsize=3, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(cols)), [c.label for c in cols])
    ax.set_ylabel("success rate (%)")
    ax.set_title(title or "CPU mini benchmarks: success per split and method")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_ylim(0, max(10.0, ax.get_ylim()[1] * 1.25))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
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

    Returns the table (markdown) so that the caller can print it.
    """
    run = Path(run_dir)
    results = load_results(run)
    table = format_table(results)
    plots = [plot_success(results, run / "success.png")]
    curves = {}
    for env in ENVIRONMENTS:
        for label, name in (("expert steps", "expert_steps_mc.jsonl"), ("explored steps", "explore_steps_mc.jsonl")):
            p = run / env.root / "sampling" / name
            if p.is_file():
                curves[f"{env.name} {label}"] = step_reward_curve(p)
    plots.append(plot_step_rewards(curves, run / "step_rewards.png"))

    timings = read_timings(run)
    lines = [f"# STeCa CPU demo: {run.name}", "", "Success rate in % (wins/tasks), greedy decoding; "
             f"{MISSING}: not evaluated in this run.", "", table, ""]
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
            shutil.copyfile(p, dest / f"demo_{p.name}")
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


def write_seed_report(run_dirs: Sequence[str | os.PathLike], output: str | os.PathLike) -> str:
    """Mean ± sd over several runs (seeds) into ``output`` (markdown) and ``<output stem>.png``; returns the table."""
    per_run = [load_results(d) for d in run_dirs]
    table = format_seed_table(per_run)
    mean_results: dict[str, dict[str, SplitResult]] = {}
    errors: dict[str, dict[str, float]] = {}
    for method, _ in METHODS:
        for col in COLUMNS:
            rs = [r[method][col.key] for r in per_run if col.key in r.get(method, {})]
            if not rs:
                continue
            m, sd = mean_sd([100 * r.rate for r in rs])
            # a SplitResult whose rate is the mean rate (scaled to 10000 tasks to keep 2 decimals)
            mean_results.setdefault(method, {})[col.key] = SplitResult(10000, round(m * 100))
            errors.setdefault(method, {})[col.key] = sd
    out = Path(output)
    png = plot_success(mean_results, out.with_suffix(".png"), errors,
                       title=f"CPU mini benchmarks: mean ± sd over {len(per_run)} seeds")
    header = "| run | wall s | CPU s | " + " | ".join(f"{e.name} wall s | {e.name} CPU s" for e in ENVIRONMENTS) + " |"
    timing_rows = [header, "|---" * (3 + 2 * len(ENVIRONMENTS)) + "|"]
    for d in run_dirs:
        ts = read_timings(d)
        cells = [f"{Path(d).name}", f"{elapsed_wall(ts):.0f}", f"{sum(t.cpu_s for t in ts):.0f}"]
        for env in ENVIRONMENTS:
            own = [t for t in ts if environment_of(t.name) == env]
            cells += [f"{elapsed_wall(own):.0f}", f"{sum(t.cpu_s for t in own):.0f}"] if own else [MISSING, MISSING]
        timing_rows.append("| " + " | ".join(cells) + " |")
    text = "\n".join([f"# STeCa CPU demo over {len(per_run)} seeds", "",
                      f"Success rate in %: mean ± sample sd (per-seed values); {MISSING}: not evaluated.", "",
                      table, "", *timing_rows, "", f"![seeds]({png.name})", ""])
    out.write_text(text, encoding="utf-8")
    return table
