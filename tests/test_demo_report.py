"""The demo's report from small hand-built run folders (the layout `python -m eval_agent.main` writes: a
summary.json and one JSON file per game): rows found from the folders, intervals, paired tests, per-type
columns, results.md, the seeds report and the plots."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from steca.demo.comparison import (ablation_table, all_comparisons, best_baseline, cell_stats, compare,
                                   format_comparison, format_table, per_type_tables, power_text, significance_text)
from steca.demo.report import plotted_columns, step_reward_curve, write_report, write_seed_report
from steca.demo.results import COLUMNS, MISSING, SplitResult, environment_of, load_results, method_rows
from steca.demo.significance import PairedCounts
from steca.demo.stage_markers import run_stage
from steca.records import StepRecord, write_records
from eval_agent.types import Message
from image_checks import colored_fraction

TYPES = ("pick_and_place_simple", "pick_clean_then_place_in_recep")


def _games(n: int, alfworld: bool) -> list[str]:
    """Game ids: ALFWorld's ``<type>-Obj-None-Recep-1/trial_…`` (alternating two types), VirtualHome's plain ids."""
    if alfworld:
        return [f"{TYPES[i % 2]}-Mug-None-Shelf-1/trial_S0_{i:05d}" for i in range(n)]
    return [f"vh_{i}" for i in range(n)]


def _write_split(d: Path, won: list[bool], alfworld: bool, per_game: bool = True) -> None:
    d.mkdir(parents=True)
    games = _games(len(won), alfworld)
    (d / "summary.json").write_text(json.dumps({"n_tasks": len(won), "n_success": sum(won),
                                                "success_rate": sum(won) / len(won)}))
    if per_game:
        for g, w in zip(games, won):
            (d / (g.replace("/", "__") + ".json")).write_text(json.dumps({"meta": {"id": g, "success": w},
                                                                           "conversations": []}))


def _fake_run(root: Path, wins: dict[str, tuple[int, int]], n: int = 10,
              vh_wins: dict[str, tuple[int, int]] | None = None, vh_n: int = 20, per_game: bool = True) -> Path:
    """A run folder: wins[row] = (seen wins, unseen wins) out of n on ALFWorld (eval/<row>/{dev,test}), the
    first games won; vh_wins the same out of vh_n on VirtualHome (vh/eval/<row>/{seen,unseen})."""
    for base, splits, table, total, alf in (("eval", ("dev", "test"), wins, n, True),
                                            ("vh/eval", ("seen", "unseen"), vh_wins or {}, vh_n, False)):
        for row, (seen, unseen) in table.items():
            for split, w in zip(splits, (seen, unseen)):
                _write_split(root / base / row / split, [i < w for i in range(total)], alf, per_game)
    samp = root / "sampling"
    samp.mkdir(parents=True, exist_ok=True)
    recs = [StepRecord("a", t, "g", "x", [Message("assistant", "x")], None, 1.0, mc_step_reward=r)
            for t, r in enumerate([0.2, 0.5, 1.0])]
    recs += [StepRecord("b", t, "g", "x", [Message("assistant", "x")], None, 1.0, mc_step_reward=r)
             for t, r in enumerate([0.4, 0.5])]
    write_records(samp / "expert_steps_mc.jsonl", recs)
    return root


def test_rows_known_first_then_new_folders():
    rows = method_rows(["steca", "zeta_variant", "sft", "ipr", "sft_more"])
    assert [r.folder for r in rows] == ["sft", "sft_more", "ipr", "steca", "zeta_variant"]
    assert rows[-1].label == "zeta_variant" and rows[-1].kind == "ablation" and rows[0].kind == "base"


def test_load_results_and_table(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "sft_more": (3, 2), "steca": (5, 4)},
                    vh_wins={"sft": (8, 3), "sft_more": (9, 2), "steca": (10, 1)})
    res = load_results(run)
    s = res["steca"]["alfworld_seen"]
    assert (s.n_tasks, s.n_success, s.rate) == (10, 5, 0.5)
    assert sum(s.outcomes.values()) == 5 and len(s.outcomes) == 10
    # per type from the game ids: games 0,2,4,6,8 are pick (wins 0,2,4), 1,3,...,9 clean (wins 1,3)
    assert s.per_type == {"pick": (3, 5), "clean": (2, 5)}
    assert res["sft"]["vh_unseen"].n_success == 3 and res["sft"]["vh_unseen"].per_type is None
    lines = format_table([res]).splitlines()
    assert lines[0] == "| Method | ALFWorld seen | ALFWorld unseen | VirtualHome seen | VirtualHome unseen |"
    assert lines[1] == "|---|---|---|---|---|"
    # Wilson 5/10: 50 ± 26.34; 4/10: centre (0.4 + 0.192073) / 1.384146 = 0.427753, half 1.959964 * 0.183313 / 1.384146
    # = 0.259574 -> [16.8, 68.7]
    assert lines[-1].startswith("| STeCa | 50.0 [23.7, 76.3] (5/10) | "
                                "40.0 [16.8, 68.7] (4/10) | 50.0 [29.9, 70.1] (10/20) | 5.0 [0.9, 23.6] (1/20) |")


def test_summary_per_type_and_bad_files_name_the_file(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1)})
    summ = run / "eval" / "sft" / "dev" / "summary.json"
    summ.write_text(json.dumps({"n_tasks": 10, "n_success": 2,
                                "success_by_type": {"heat": {"n_tasks": 10, "n_success": 2, "success_rate": 0.2}}}))
    assert load_results(run)["sft"]["alfworld_seen"].per_type == {"heat": (2, 10)}
    summ.write_text(json.dumps({"n_tasks": 10, "n_success": 2, "success_by_type": {"heat": {"n_tasks": "x"}}}))
    with pytest.raises(ValueError, match=r"dev/summary.json.*success_by_type.heat"):
        load_results(run)
    summ.write_text(json.dumps({"n_tasks": 10}))
    with pytest.raises(ValueError, match=r"eval/sft/dev/summary.json.*n_success"):
        load_results(run)
    summ.write_text(json.dumps({"n_tasks": 10, "n_success": 2}))
    bad = next(p for p in summ.parent.glob("*.json") if p.name != "summary.json")
    bad.write_text(json.dumps({"meta": {"success": True}}))
    with pytest.raises(ValueError, match=rf"{bad.name}.*meta.id"):
        load_results(run)


def test_run_without_virtualhome_and_missing_rows_show_dashes(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "sft_more": (3, 2), "steca": (5, 4)})
    res = load_results(run)
    assert [c.key for c in plotted_columns([res])] == ["alfworld_seen", "alfworld_unseen"]
    run2 = _fake_run(tmp_path / "r2", {"sft": (2, 1)}, vh_wins={"steca": (4, 0)})
    table = format_table([load_results(run2)])
    assert f"| STeCa | {MISSING} | {MISSING} | 20.0" in table
    assert f"| SFT (base agent) | 20.0 [5.7, 51.0] (2/10) | 10.0 [1.8, 40.4] (1/10) | {MISSING} | {MISSING} |" in table
    assert [c.key for c in plotted_columns([load_results(run2)])] == [c.key for c in COLUMNS]


def test_paired_comparisons_and_best_baseline(tmp_path):
    # 10 games, first w won: steca (5) vs sft (2) -> only steca 3, only sft 0: p = 2/8 = 0.25
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "sft_more": (3, 2), "ipr": (4, 0), "steca": (5, 4)})
    res = [load_results(run)]
    c = compare(res, "steca", "sft", "alfworld_seen")
    assert c.counts == PairedCounts(both=2, only_a=3, only_b=0, neither=5) and c.p == 0.25 and c.diff == 0.3
    assert c.seeds is None and format_comparison(c) == "+30.0 (3:0) p=0.250"  # one run: no test over seeds
    # two runs with the same difference (here the same run twice): no spread, so no t statistic and no p
    twice = compare(res + res, "steca", "sft", "alfworld_seen")
    assert twice.seeds.p is None and format_comparison(twice) == "+30.0 (6:0) p=0.031; seeds [+30.0, +30.0] no spread"
    rows = method_rows(list(res[0]))
    assert best_baseline(res, rows, "alfworld_seen").folder == "ipr"          # 4/10 beats 3/10
    assert best_baseline(res, rows, "alfworld_unseen").folder == "sft_more"   # 2/10 beats 0/10
    assert best_baseline(res, rows, "alfworld_seen", exclude="ipr").folder == "sft_more"
    comps = {(r.folder, col.key): (s, b, vb) for r, col, s, b, vb in all_comparisons(res)}
    s, b, vb = comps[("steca", "alfworld_seen")]
    assert b.folder == "ipr" and vb.counts.only_a == 1 and vb.p == 1.0
    # no per-game files: no paired test, the table still has the rates
    nopair = _fake_run(tmp_path / "np", {"sft": (2, 1), "steca": (5, 4)}, per_game=False)
    assert compare([load_results(nopair)], "steca", "sft", "alfworld_seen") is None
    assert significance_text([load_results(nopair)])[0].startswith("No paired test")


def test_steca_against_its_ablations(tmp_path):
    # seen: STeCa wins games 0-4, w/o D_c games 0-1 -> 3:0; unseen: 4 against 6 -> 0:2
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "steca": (5, 4), "steca_no_dc": (2, 6), "zeta_variant": (5, 4)})
    lines = ablation_table([load_results(run)])
    assert lines[:2] == ["### STeCa against its ablations (positive: STeCa wins more)", ""]
    assert "| STeCa w/o D_c | +30.0 (3:0) p=0.250 | -20.0 (0:2) p=0.500 |" in lines
    assert "| zeta_variant | +0.0 (0:0) p=1.000 | +0.0 (0:0) p=1.000 |" in lines  # a new folder counts as an ablation
    assert not any("SFT" in line for line in lines[3:])  # neither SFT nor a baseline is an ablation
    assert ablation_table([load_results(_fake_run(tmp_path / "s", {"sft": (2, 1), "steca": (5, 4)}))]) == []


def test_significance_words_and_power(tmp_path):
    # 40 games: steca wins 20, sft 5 -> discordant 15:0, p = 2 / 2^15
    run = _fake_run(tmp_path / "r", {"sft": (5, 4), "steca": (20, 5)}, n=40)
    res = [load_results(run)]
    text = "\n".join(significance_text(res))
    assert "1 of the 2 paired differences are significant" in text
    assert "STeCa is above SFT (base agent) on ALFWorld seen: +37.5 points, 15 games " \
           "won only by it and 0 only by SFT (base agent), p<0.001." in text
    power = "\n".join(power_text(res))
    # seen: SFT 5/40 = 12.5 %; unseen: 10 %, the hand-computed 686 games; paired at psi = 1/40 -> raised to 5 %: 155
    assert "ALFWorld unseen: at SFT's 10.0 %, 10.0 → 15.0 % needs 686 games per method on independent games, " \
           "155 paired games" in power
    assert "these runs have 40 (40)." in power
    same = _fake_run(tmp_path / "s", {"sft": (5, 4), "steca": (6, 4)}, n=40)
    assert "None of the 2 paired differences is significant" in significance_text([load_results(same)])[0]


def test_per_type_tables(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "steca": (5, 4)}, vh_wins={"sft": (8, 3)})
    lines = per_type_tables([load_results(run)])
    assert "### ALFWorld seen" in lines and "| task type | sft | steca |" in lines
    # seen: sft wins games 0, 1 (pick 1/5, clean 1/5); steca games 0-4 (pick 0, 2, 4: 3/5; clean 1, 3: 2/5)
    assert "| pick | 20.0 (1/5) | 60.0 (3/5) |" in lines and "| clean | 20.0 (1/5) | 40.0 (2/5) |" in lines
    assert not any("VirtualHome" in line for line in lines)   # no per-type data there


def test_step_reward_curve(tmp_path):
    run = _fake_run(tmp_path / "r", {})
    curve = step_reward_curve(run / "sampling" / "expert_steps_mc.jsonl")
    assert curve[0] == (pytest.approx(0.3), 2)
    assert curve[2] == (1.0, 1)


def test_report_writes_results_md_and_plots(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "sft_more": (3, 2), "steca": (5, 4)},
                    vh_wins={"sft": (8, 3), "sft_more": (9, 2), "steca": (10, 1)})
    msgs = [Message("assistant", "Thought: a\nAction: b")]
    write_records(run / "vh" / "sampling" / "explore_steps_mc.jsonl",
                  [StepRecord("v", 0, "g", "x", msgs, None, 0.0, mc_step_reward=0.5)])
    for root, n in ((run, 7), (run / "vh", 3)):
        (root / "data").mkdir(parents=True)
        (root / "data" / "steca_pairs_summary.json").write_text(json.dumps(
            {"pairs": n, "per_set": {"expert": n}, "per_rule": {"expert: whole": n}}))
    run_stage(run, "generate", [sys.executable, "-c", "pass"])
    run_stage(run, "vh_generate", [sys.executable, "-c", "pass"])
    table = write_report(run, tmp_path / "assets")
    md = (run / "results.md").read_text()
    assert table in md and "| generate |" in md and "| vh_generate |" in md
    assert "### Against SFT (base agent)" in md and "### Against the best baseline" in md
    assert "| STeCa | +30.0 (3:0) p=0.250 |" in md
    assert "## Games needed" in md and "## Success by task type" in md
    assert "## Training pairs, ALFWorld\n\n7 pairs: expert 7" in md
    assert "## Training pairs, VirtualHome\n\n3 pairs: expert 3" in md
    assert "| ALFWorld stages |" in md and "| VirtualHome stages |" in md and "| total (stages run" in md
    for name in ("success.png", "step_rewards.png"):
        assert colored_fraction(run / name) > 0.005  # bars drawn
        assert (tmp_path / "assets" / f"demo_{name}").is_file()


def test_report_of_rows_that_won_no_game_or_every_game(tmp_path):
    # 0 of 40 and 40 of 40: the error bars are 0 long on one side, never negative (matplotlib refuses those)
    run = _fake_run(tmp_path / "r", {"sft": (0, 0), "steca": (40, 0)}, n=40)
    write_report(run)
    assert colored_fraction(run / "success.png") > 0.005
    md = (run / "results.md").read_text()
    assert "| SFT (base agent) | 0.0 [0.0, 8.8] (0/40) |" in md and "| 100.0 [91.2, 100.0] (40/40) |" in md


def test_report_names_who_wrote_the_reflections(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "steca": (5, 4)}, vh_wins={"sft": (8, 3), "steca": (10, 1)})
    for root, settings in ((run, {"reflector": "offline-stand-in", "reflection_stand_in": True}),
                           (run / "vh", {"reflector": "hf:/x/models/smollm2", "reflection_stand_in": False})):
        (root / "data").mkdir(parents=True)
        (root / "data" / "d_c_summary.json").write_text(json.dumps({"pairs": 3, "settings": settings}))
    write_report(run)
    md = (run / "results.md").read_text()
    assert "STeCa's D_c reflections, ALFWorld: offline stand-in (a template, not an LLM)." in md
    assert "STeCa's D_c reflections, VirtualHome: hf:smollm2." in md
    out = tmp_path / "seeds.md"
    write_seed_report([run, _fake_run(tmp_path / "r2", {"sft": (1, 1), "steca": (2, 2)})], out)
    # the second run has no D_c summary: only the first run's sources are named
    assert "STeCa's D_c reflections, VirtualHome: hf:smollm2." in out.read_text()


def test_stage_environment():
    assert environment_of("vh_sft").name == "VirtualHome"
    assert environment_of("sft").name == environment_of("eval_steca_dev").name == "ALFWorld"


def test_seed_report(tmp_path):
    runs = [_fake_run(tmp_path / f"s{i}", {"sft": (i, i), "sft_more": (2, 2), "steca": (4 + i, 3)},
                      vh_wins={"sft": (2 * i, 0), "sft_more": (4, 4), "steca": (6, 2)}) for i in range(3)]
    # an older run without the VirtualHome block adds to the ALFWorld columns only
    runs.append(_fake_run(tmp_path / "old", {"sft": (1, 1), "sft_more": (2, 2), "steca": (4, 3)}))
    per_run = [load_results(r) for r in runs]
    cell = cell_stats(per_run, "sft", "alfworld_seen")
    assert cell.mean == pytest.approx(0.1) and (cell.wins, cell.games) == (4, 40) and cell.lo < 0.1 < cell.hi
    assert len(cell_stats(per_run, "sft", "vh_seen").results) == 3
    # no seed wins a VirtualHome unseen game for sft: Wilson of the pooled 0/60 = [0, 3.841459 / 63.841459]
    zero = cell_stats(per_run, "sft", "vh_unseen")
    assert zero.lo == pytest.approx(0.0, abs=1e-12) and zero.hi == pytest.approx(3.841459 / 63.841459, abs=2e-6)
    table = format_table(per_run)
    assert "| SFT (base agent) | 10.0 [" in table and "(0.0, 10.0, 20.0, 10.0) |" in table
    # steca vs sft, ALFWorld seen, per seed (only steca, only sft) = (4,0), (4,0), (4,0), (3,0): 15:0 pooled
    c = compare(per_run, "steca", "sft", "alfworld_seen")
    assert c.counts.only_a == 15 and c.counts.only_b == 0 and c.n_runs == 4 and c.p == 2 / 2 ** 15
    # the t test over the seeds: differences 0.4, 0.4, 0.4, 0.3 (tests/test_significance.py by hand)
    assert c.seeds.mean == pytest.approx(0.375) and c.seeds.lo == pytest.approx(0.375 - 0.0795612, abs=1e-6)
    for i, r in enumerate(runs):
        run_stage(r, "sft", [sys.executable, "-c", "pass"])
        if i < 3:
            run_stage(r, "vh_sft", [sys.executable, "-c", "pass"])
    out = tmp_path / "seeds.md"
    assert write_seed_report(runs, out, tmp_path / "assets") == table
    text = out.read_text()
    assert out.with_suffix(".png").is_file() and (tmp_path / "assets" / "demo_seeds.png").is_file() and table in text
    assert "pooled over the seeds" in text and "+37.5 (15:0) p<0.001; seeds [+29.5, +45.5] p<0.001" in text
    assert "also by the t test over the seeds" in text and "holds each trained model fixed" in text
    assert "| run | wall s | CPU s | ALFWorld wall s | ALFWorld CPU s | VirtualHome wall s | VirtualHome CPU s |" in text
    old_row = next(line for line in text.splitlines() if line.startswith("| old |"))
    assert old_row.endswith(f"| {MISSING} | {MISSING} |")
    assert SplitResult(10, 5).rate == 0.5


def test_seed_report_into_its_own_assets_folder(tmp_path):
    """--assets_dir may be the report's own folder: the plot is already there, nothing to copy."""
    runs = [_fake_run(tmp_path / f"s{i}", {"sft": (i, i), "steca": (2, 2)}) for i in range(2)]
    out = tmp_path / "report" / "demo_seeds.md"  # its plot is demo_seeds.png, the assets' name
    out.parent.mkdir()
    write_seed_report(runs, out, out.parent)
    png = out.parent / "demo_seeds.png"
    assert png.is_file() and png.stat().st_size > 0
    assert out.read_text().startswith("# STeCa CPU demo over 2 seeds\n")
    write_seed_report(runs[:1], out)  # SEEDS=0
    assert out.read_text().startswith("# STeCa CPU demo over 1 seed\n")
