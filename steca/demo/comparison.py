"""The report's numbers and tables from one or several runs (seeds) of the demo: success with its 95 %
interval, every row compared with SFT and with the best baseline on the same games by an exact paired
test, the significant differences in words, the games a 5-point difference needs, success by task type.

One run: Wilson intervals and McNemar's exact test. Several runs (seeds): the mean over seeds with a
bootstrap interval over seeds and games, McNemar's exact test on the discordant games pooled over seeds
(:func:`steca.demo.significance.pooled_mcnemar`), and the t test of the per-seed differences
(:func:`steca.demo.significance.seed_difference_test`), which also sees the variation between training
runs. Formulas: :mod:`steca.demo.significance`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from steca.demo.results import (BASE_ROW, COLUMNS, MAIN_ROW, MISSING, Column, MethodRow,
                                RunResults, SplitResult, method_rows)
from steca.demo.significance import (ALPHA, DELTA, POWER, PairedCounts, SeedTest, bootstrap_interval,
                                     games_for_difference, games_for_paired_difference, paired_counts, pooled_mcnemar,
                                     seed_difference_test, wilson_interval)


@dataclass(frozen=True)
class CellStats:
    """One row's success in one column over the runs that evaluated it: ``mean`` of the runs' rates and its
    95 % interval ``[lo, hi]`` (fractions): Wilson for one run, bootstrap over seeds and games for several
    (Wilson of the pooled counts when no run won a game or every run won all, where the bootstrap is a point)."""

    results: tuple[SplitResult, ...]
    mean: float
    lo: float
    hi: float

    @property
    def wins(self) -> int:
        return sum(r.n_success for r in self.results)

    @property
    def games(self) -> int:
        return sum(r.n_tasks for r in self.results)


def cell_stats(per_run: Sequence[RunResults], folder: str, column: str) -> CellStats | None:
    """The statistics of row ``folder`` in ``column`` over the runs that have it (None: no run has it)."""
    rs = tuple(r[folder][column] for r in per_run if column in r.get(folder, {}) and r[folder][column].n_tasks)
    if not rs:
        return None
    mean = sum(r.rate for r in rs) / len(rs)
    if len(rs) == 1:
        lo, hi = wilson_interval(rs[0].n_success, rs[0].n_tasks)
    else:
        lo, hi = bootstrap_interval([(r.n_success, r.n_tasks) for r in rs])
        if lo == hi:  # no seed won a game (or every seed won all): the bootstrap cannot spread; Wilson of the pool
            lo, hi = wilson_interval(sum(r.n_success for r in rs), sum(r.n_tasks for r in rs))
    return CellStats(rs, mean, lo, hi)


@dataclass(frozen=True)
class Comparison:
    """Row ``row`` against row ``other`` in ``column`` on the games both were evaluated on, pooled over the
    ``n_runs`` runs where both have per-game outcomes: ``counts.only_a`` games won by ``row`` alone,
    ``counts.only_b`` by ``other`` alone; ``diff`` = (only_a - only_b) / games, the difference in success
    rate on those games; ``p`` the exact McNemar p-value of the pooled discordant counts; ``seeds`` the t test
    of the per-run differences (None with fewer than two runs)."""

    row: str
    other: str
    column: str
    counts: PairedCounts
    p: float
    n_runs: int
    seeds: SeedTest | None = None

    @property
    def diff(self) -> float:
        return (self.counts.only_a - self.counts.only_b) / self.counts.n


def compare(per_run: Sequence[RunResults], row: str, other: str, column: str) -> Comparison | None:
    """Paired comparison of two rows in one column (None when no run has per-game outcomes of both)."""
    per_seed = []
    for r in per_run:
        a, b = r.get(row, {}).get(column), r.get(other, {}).get(column)
        if a is None or b is None or not a.outcomes or not b.outcomes:
            continue
        try:
            per_seed.append(paired_counts(a.outcomes, b.outcomes))
        except ValueError:
            continue  # no common game in this run
    if not per_seed:
        return None
    total, p = pooled_mcnemar(per_seed)
    seeds = (seed_difference_test([(c.only_a - c.only_b) / c.n for c in per_seed]) if len(per_seed) > 1 else None)
    return Comparison(row, other, column, total, p, len(per_seed), seeds)


def best_baseline(per_run: Sequence[RunResults], rows: Sequence[MethodRow], column: str,
                  exclude: str = "") -> MethodRow | None:
    """The ``baseline`` row (other than ``exclude``) with the highest pooled success in ``column``; ties go
    to the earlier row. None when no baseline has a result there."""
    best, best_rate = None, -1.0
    for row in rows:
        if row.kind != "baseline" or row.folder == exclude:
            continue
        cell = cell_stats(per_run, row.folder, column)
        if cell is not None and cell.wins / cell.games > best_rate:
            best, best_rate = row, cell.wins / cell.games
    return best


def _columns(per_run: Sequence[RunResults]) -> list[Column]:
    return [c for c in COLUMNS if any(c.key in cols for r in per_run for cols in r.values())]


def _rows(per_run: Sequence[RunResults]) -> list[MethodRow]:
    return method_rows(sorted({f for r in per_run for f in r}))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def format_p(p: float) -> str:
    """``p=0.069``, or ``p<0.001``."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def format_cell(cell: CellStats | None) -> str:
    """One run: ``7.5 [2.6, 19.9] (3/40)``; several: ``7.5 [3.3, 15.0] (2.5, 12.5, 7.5)`` (per-run rates)."""
    if cell is None:
        return MISSING
    interval = f"{_pct(cell.mean)} [{_pct(cell.lo)}, {_pct(cell.hi)}]"
    if len(cell.results) == 1:
        return f"{interval} ({cell.wins}/{cell.games})"
    return f"{interval} ({', '.join(_pct(r.rate) for r in cell.results)})"


def _header(cols: Sequence[Column], first: str = "Method") -> list[str]:
    return [f"| {first} | " + " | ".join(c.label for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]


def format_table(per_run: Sequence[RunResults]) -> str:
    """Markdown success table: one row per method, one column per environment and split, each cell the
    success (%) with its 95 % interval (:func:`format_cell`)."""
    cols = _columns(per_run) or list(COLUMNS)
    lines = _header(cols)
    for row in _rows(per_run):
        lines.append(f"| {row.label} | " + " | ".join(format_cell(cell_stats(per_run, row.folder, c.key))
                                                      for c in cols) + " |")
    return "\n".join(lines)


def format_comparison(c: Comparison | None, name: str = "") -> str:
    """``+2.5 (3:2) p=0.688``: difference in points, games won only by the row : only by the other, p;
    ``name`` (the other row) is written after the difference when given. Several runs add the seed-level t
    test: ``; seeds [-1.2, +6.0] p=0.120`` (95 % t interval of the mean per-seed difference, in points)."""
    if c is None:
        return MISSING
    vs = f" vs {name}" if name else ""
    text = f"{100 * c.diff:+.1f}{vs} ({c.counts.only_a}:{c.counts.only_b}) {format_p(c.p)}"
    if c.seeds is not None:
        p = "no spread" if c.seeds.p is None else format_p(c.seeds.p)
        text += f"; seeds [{100 * c.seeds.lo:+.1f}, {100 * c.seeds.hi:+.1f}] {p}"
    return text


def all_comparisons(per_run: Sequence[RunResults]) -> list[tuple[MethodRow, Column, Comparison | None,
                                                                   MethodRow | None, Comparison | None]]:
    """For every row but the base one and every column: ``(row, column, against SFT, the best baseline other
    than the row, against it)``."""
    rows = _rows(per_run)
    out = []
    for row in rows:
        if row.folder == BASE_ROW:
            continue
        for col in _columns(per_run):
            if cell_stats(per_run, row.folder, col.key) is None:
                continue
            best = best_baseline(per_run, rows, col.key, exclude=row.folder)
            out.append((row, col, compare(per_run, row.folder, BASE_ROW, col.key), best,
                        compare(per_run, row.folder, best.folder, col.key) if best else None))
    return out


def format_paired_tables(per_run: Sequence[RunResults]) -> list[str]:
    """Markdown tables, a cell per row and column: every row against SFT, against the best baseline, and (when
    the runs have ablation rows) STeCa against each ablation."""
    cols = _columns(per_run)
    comps = all_comparisons(per_run)
    lines = []
    for title, pick in (("Against SFT (base agent)", lambda t: format_comparison(t[2])),
                        ("Against the best baseline other than the row itself (highest success in the column)",
                         lambda t: format_comparison(t[4], t[3].label if t[3] else ""))):
        lines += [f"### {title}", "", *_header(cols)]
        for row in _rows(per_run):
            if row.folder == BASE_ROW:
                continue
            cells = {t[1].key: pick(t) for t in comps if t[0] == row}
            lines.append(f"| {row.label} | " + " | ".join(cells.get(c.key, MISSING) for c in cols) + " |")
        lines.append("")
    return lines + ablation_table(per_run)


def ablation_table(per_run: Sequence[RunResults]) -> list[str]:
    """STeCa against each of its ablations on the same games, a line per ablation: a positive difference is
    what the removed or replaced part adds. Empty when the runs have no ablation row."""
    ablations = [r for r in _rows(per_run) if r.kind == "ablation"]
    if not ablations or not any(MAIN_ROW in r for r in per_run):
        return []
    cols = _columns(per_run)
    lines = ["### STeCa against its ablations (positive: STeCa wins more)", "", *_header(cols, "Ablation")]
    for row in ablations:
        cells = [format_comparison(compare(per_run, MAIN_ROW, row.folder, c.key)) for c in cols]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return lines + [""]


def significance_text(per_run: Sequence[RunResults], alpha: float = ALPHA) -> list[str]:
    """The differences significant at ``alpha``, in words (or that none is)."""
    labels = {r.folder: r.label for r in _rows(per_run)}
    found, tested, both = [], 0, 0
    for row, col, vs_sft, best, vs_best in all_comparisons(per_run):
        for c in (vs_sft, vs_best):
            if c is None:
                continue
            tested += 1
            if c.p < alpha:
                way = "above" if c.diff > 0 else "below"
                seeds = ""
                if c.seeds is not None:
                    held = c.seeds.p is not None and c.seeds.p < alpha
                    both += held
                    over = ("every seed has the same difference, so no t test" if c.seeds.p is None
                            else f"over the seeds {format_p(c.seeds.p)}")
                    seeds = f"; {over}{'' if held else ', not significant once training runs vary'}"
                found.append(f"- {row.label} is {way} {labels[c.other]} on {col.label}: {100 * c.diff:+.1f} points, "
                             f"{c.counts.only_a} game{'' if c.counts.only_a == 1 else 's'} won only by it and {c.counts.only_b} "
                             "only by "
                             f"{labels[c.other]}, {format_p(c.p)}{seeds}.")
    if not tested:
        return ["No paired test: the runs have no per-game outcomes of two rows on the same games."]
    if not found:
        return [f"None of the {tested} paired differences is significant at p < {alpha}: at these sample sizes "
                "the table cannot tell the methods apart."]
    several = any(c.seeds is not None for t in all_comparisons(per_run) for c in (t[2], t[4]) if c is not None)
    head = (f"{len(found)} of the {tested} paired differences are significant at p < {alpha} by McNemar's test (not "
            "corrected for multiple comparisons)")
    if several:
        head += f"; {both} of them also by the t test over the seeds"
    return [head + ":", *found]


def power_text(per_run: Sequence[RunResults], delta: float = DELTA, alpha: float = ALPHA,
               power: float = POWER) -> list[str]:
    """Per column: the games per split a ``delta`` improvement over SFT's measured rate needs (independent
    games: :func:`games_for_difference`; paired at the discordance measured between the main method and
    SFT: :func:`games_for_paired_difference`), against the games the runs have."""
    out = []
    main = MAIN_ROW if any(MAIN_ROW in r for r in per_run) else next(
        (r.folder for r in _rows(per_run) if r.folder != BASE_ROW), "")
    labels = {r.folder: r.label for r in _rows(per_run)}
    for col in _columns(per_run):
        base = cell_stats(per_run, BASE_ROW, col.key)
        if base is None:
            continue
        p = base.wins / base.games
        if p + delta > 1:
            out.append(f"- {col.label}: SFT wins {_pct(p)} %, too close to 100 % for a {100 * delta:.0f}-point gain.")
            continue
        text = (f"- {col.label}: at SFT's {_pct(p)} %, {_pct(p)} → {_pct(p + delta)} % needs "
                f"{games_for_difference(p, delta, alpha, power)} games per method on independent games")
        c = compare(per_run, main, BASE_ROW, col.key) if main else None
        if c is not None:
            psi = (c.counts.only_a + c.counts.only_b) / c.counts.n
            text += (f", {games_for_paired_difference(psi, delta, alpha, power)} paired games at the discordance "
                     f"measured between {labels[main]} and SFT ({_pct(psi)} % of games won by one of them only)")
        out.append(text + f"; these runs have {base.games} ({' + '.join(str(r.n_tasks) for r in base.results)}).")
    if out:
        out.insert(0, f"Games needed to detect a {100 * delta:.0f}-point gain over SFT with {100 * power:.0f} % power "
                      f"at two-sided α = {alpha} (formulas in `steca/demo/significance.py`):")
    return out


def per_type_tables(per_run: Sequence[RunResults]) -> list[str]:
    """Per column with per-type results: one table, a line per task type and a column per row (the rows'
    folder names, in table order), cells ``rate (wins/games)`` pooled over the runs."""
    lines: list[str] = []
    rows = _rows(per_run)
    for col in COLUMNS:
        counts: dict[str, dict[str, list[int]]] = {}   # type -> row folder -> [wins, games]
        for r in per_run:
            for folder, res in r.items():
                sr = res.get(col.key)
                for t, (k, n) in ((sr.per_type or {}).items() if sr else ()):
                    c = counts.setdefault(t, {}).setdefault(folder, [0, 0])
                    c[0] += k
                    c[1] += n
        if not counts:
            continue
        shown = [row for row in rows if any(row.folder in v for v in counts.values())]
        lines += [f"### {col.label}", "", "| task type | " + " | ".join(row.folder for row in shown) + " |",
                  "|---" * (len(shown) + 1) + "|"]
        for t, by_row in counts.items():   # the order of the first run's summary (eval_agent's type order)
            cells = []
            for row in shown:
                k, n = by_row.get(row.folder, (0, 0))
                cells.append(f"{_pct(k / n)} ({k}/{n})" if n else MISSING)
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def comparison_sections(per_run: Sequence[RunResults]) -> list[str]:
    """The markdown sections shared by a run's ``results.md`` and the seeds report."""
    several = len(per_run) > 1
    interval = ("mean over the seeds [95 % percentile bootstrap interval, resampling seeds and then games] "
                "(per-seed values)" if several else "[95 % Wilson interval] (wins/games)")
    test = ("exact McNemar test on the discordant games pooled over the seeds (stratified McNemar: under the null "
            "each discordant game of each seed is a fair coin), then the t test over the seeds: the 95 % t interval "
            "of the mean per-seed difference and its p-value" if several else "exact McNemar test")
    lines = ["## Success rate", "", f"Success in %, greedy decoding: {interval}; {MISSING}: not evaluated.", "",
             format_table(per_run), "",
             "## Paired tests", "",
             f"Each row against SFT and against the best baseline on the same games, by the {test}. A cell is the "
             "difference in points on the common games, (games won only by the row : only by the other), and the "
             "two-sided p-value.", "", "McNemar's test holds each trained model fixed: it sees which games a model "
             "wins, not how far its success moves when it is trained again (another data order, another seed), so "
             "with one run a small p is no proof that the method, rather than that training run, differs."
             + (" The t test over the seeds uses the spread of the per-seed differences, which contains that "
                "variation; with few seeds it is weak." if several else ""), "",
             *format_paired_tables(per_run), *significance_text(per_run), ""]
    power = power_text(per_run)
    if power:
        lines += ["## Games needed", "", *power, ""]
    types = per_type_tables(per_run)
    if types:
        lines += ["## Success by task type", "", "Pooled over the runs: rate % (wins/games); columns are the rows' "
                  "evaluation folders.", "", *types]
    return lines
