"""The demo's orchestration pieces: stage markers (skip finished, rerun failed), subset, step counts,
the results table / results.md / plots from small hand-built run folders. The full demo is not run here."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from steca.demo.__main__ import main as demo_main
from steca.demo.prep import take_subset, training_steps
from steca.demo.results import (COLUMNS, MISSING, SplitResult, elapsed_wall, environment_of, format_seed_table,
                                format_table, load_results, mean_sd, plotted_columns, step_reward_curve, write_report,
                                write_seed_report)
from steca.demo.stage_markers import StageTiming, is_done, marker_path, read_timings, run_stage
from steca.records import PairRecord, SFTRecord, StepRecord, load_sft, write_records
from eval_agent.types import Message

REPO = Path(__file__).resolve().parents[1]


def _counter_cmd(counter: Path, fail: bool = False) -> list[str]:
    """A command that appends a line to ``counter`` (so we can count runs) and optionally fails."""
    code = f"open({str(counter)!r}, 'a').write('x\\n'); raise SystemExit({1 if fail else 0})"
    return [sys.executable, "-c", code]


def test_stage_runs_once_and_rerun_skips(tmp_path):
    counter = tmp_path / "count.txt"
    first = run_stage(tmp_path, "gen", _counter_cmd(counter))
    assert first is not None and first.wall_s >= 0 and first.cpu_s >= 0
    assert is_done(tmp_path, "gen")
    assert run_stage(tmp_path, "gen", _counter_cmd(counter)) is None
    assert counter.read_text().count("x") == 1
    marker = json.loads(marker_path(tmp_path, "gen").read_text())
    assert marker["name"] == "gen" and marker["command"][0] == sys.executable


def test_failed_stage_leaves_no_marker_and_reruns(tmp_path):
    import subprocess

    counter = tmp_path / "count.txt"
    with pytest.raises(subprocess.CalledProcessError):
        run_stage(tmp_path, "sft", _counter_cmd(counter, fail=True))
    assert not is_done(tmp_path, "sft")
    assert run_stage(tmp_path, "sft", _counter_cmd(counter)) is not None
    assert counter.read_text().count("x") == 2
    assert [t.name for t in read_timings(tmp_path)] == ["sft"]


def test_stage_cli_exit_status_and_env(tmp_path, monkeypatch):
    out = tmp_path / "env.txt"
    monkeypatch.setenv("DEMO_TEST_VALUE", "42")
    code = f"import os; open({str(out)!r}, 'w').write(os.environ['DEMO_TEST_VALUE'])"
    assert demo_main(["stage", "--run_dir", str(tmp_path), "--name", "a", "--", sys.executable, "-c", code]) == 0
    assert out.read_text() == "42"
    assert demo_main(["is-done", "--run_dir", str(tmp_path), "--name", "a"]) == 0
    assert demo_main(["is-done", "--run_dir", str(tmp_path), "--name", "b"]) == 1
    assert demo_main(["stage", "--run_dir", str(tmp_path), "--name", "b", "--", sys.executable, "-c",
                      "raise SystemExit(3)"]) == 3
    assert not is_done(tmp_path, "b")


def test_bad_stage_name(tmp_path):
    with pytest.raises(ValueError):
        marker_path(tmp_path, "../x")


def _sft(i: int) -> SFTRecord:
    return SFTRecord(f"t{i}", f"g{i}", [Message("user", "instr"), Message("assistant", "OK"),
                                        Message("user", "obs"), Message("assistant", f"Thought: x\nAction: go to shelf {i}")])


def test_subset_is_seeded_and_keeps_order(tmp_path):
    src = write_records(tmp_path / "sft.json", [_sft(i) for i in range(10)])
    assert take_subset(src, 4, 0, tmp_path / "a.json") == 4
    assert take_subset(src, 4, 0, tmp_path / "b.json") == 4
    a = [r.id for r in load_sft(tmp_path / "a.json").records]
    assert a == [r.id for r in load_sft(tmp_path / "b.json").records]
    assert a == sorted(a, key=lambda s: int(s[1:]))
    assert take_subset(src, 0, 0, tmp_path / "all.json") == 10
    assert take_subset(src, 50, 0, tmp_path / "all2.json") == 10


def test_training_steps(tmp_path):
    msgs = [Message("assistant", "Thought: a\nAction: b")]
    pairs = [PairRecord(f"p{i}", [Message("user", "u")], msgs, msgs, 1.0) for i in range(5)]
    path = write_records(tmp_path / "pairs.json", pairs)
    assert training_steps(path, 2) == 3
    assert training_steps(path, 2, epochs=2) == 6
    assert training_steps(path, 5) == 1
    empty = write_records(tmp_path / "empty.json", [])
    with pytest.raises(ValueError, match="empty.json"):
        training_steps(empty, 2)


def _fake_run(root: Path, wins: dict[str, tuple[int, int]], n: int = 10,
              vh_wins: dict[str, tuple[int, int]] | None = None, vh_n: int = 20) -> Path:
    """A run folder with eval summaries: wins[method] = (seen wins, unseen wins) out of n each on ALFWorld
    (eval/<method>/{dev,test}); vh_wins the same out of vh_n on VirtualHome (vh/eval/<method>/{seen,unseen})."""
    for base, splits, table, total in (("eval", ("dev", "test"), wins, n),
                                       ("vh/eval", ("seen", "unseen"), vh_wins or {}, vh_n)):
        for method, (seen, unseen) in table.items():
            for split, w in zip(splits, (seen, unseen)):
                d = root / base / method / split
                d.mkdir(parents=True)
                (d / "summary.json").write_text(json.dumps({"n_tasks": total, "n_success": w, "success_rate": w / total}))
    samp = root / "sampling"
    samp.mkdir(parents=True, exist_ok=True)
    recs = [StepRecord("a", t, "g", "x", [Message("assistant", "x")], None, 1.0, r)
            for t, r in enumerate([0.2, 0.5, 1.0])]
    recs += [StepRecord("b", t, "g", "x", [Message("assistant", "x")], None, 1.0, r)
             for t, r in enumerate([0.4, 0.5])]
    write_records(samp / "expert_steps_mc.jsonl", recs)
    return root


def test_load_results_and_table(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "sft_more": (3, 2), "steca": (5, 4)},
                    vh_wins={"sft": (8, 3), "sft_more": (9, 2), "steca": (10, 1)})
    res = load_results(run)
    assert res["steca"]["alfworld_seen"] == SplitResult(10, 5)
    assert res["steca"]["vh_seen"] == SplitResult(20, 10) and res["sft"]["vh_unseen"] == SplitResult(20, 3)
    lines = format_table(res).splitlines()
    # the paper's layout: ALFWorld seen, unseen, then VirtualHome seen, unseen
    assert lines[0] == "| Method | ALFWorld seen | ALFWorld unseen | VirtualHome seen | VirtualHome unseen |"
    assert lines[1] == "|---|---|---|---|---|"
    assert "| STeCa (offline stand-in reflections) | 50.0 (5/10) | 40.0 (4/10) | 50.0 (10/20) | 5.0 (1/20) |" in lines
    assert "| SFT (base agent) | 20.0 (2/10) | 10.0 (1/10) | 40.0 (8/20) | 15.0 (3/20) |" in lines


def test_run_without_virtualhome_shows_dashes(tmp_path):
    """An old run folder (ALFWorld only) still gives the table, with "—" in the VirtualHome columns."""
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "sft_more": (3, 2), "steca": (5, 4)})
    table = format_table(load_results(run))
    assert f"| SFT (base agent) | 20.0 (2/10) | 10.0 (1/10) | {MISSING} | {MISSING} |" in table
    assert [c.key for c in plotted_columns(load_results(run))] == ["alfworld_seen", "alfworld_unseen"]


def test_missing_results_show_dash_and_bad_summary_names_file(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1)}, vh_wins={"steca": (4, 0)})
    table = format_table(load_results(run))
    assert f"| STeCa (offline stand-in reflections) | {MISSING} | {MISSING} | 20.0 (4/20) | 0.0 (0/20) |" in table
    assert [c.key for c in plotted_columns(load_results(run))] == [c.key for c in COLUMNS]
    (run / "vh" / "eval" / "steca" / "unseen" / "summary.json").write_text(json.dumps({"n_tasks": 20}))
    with pytest.raises(ValueError, match=r"vh/eval/steca/unseen/summary.json.*n_success"):
        load_results(run)
    (run / "eval" / "sft" / "dev" / "summary.json").write_text(json.dumps({"n_tasks": "ten"}))
    with pytest.raises(ValueError, match=r"summary.json.*n_tasks"):
        load_results(run)


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
                  [StepRecord("v", 0, "g", "x", msgs, None, 0.0, 0.5)])
    for root, n in ((run, 7), (run / "vh", 3)):
        (root / "data").mkdir(parents=True)
        (root / "data" / "steca_pairs_summary.json").write_text(json.dumps(
            {"pairs": n, "per_set": {"expert": n}, "per_rule": {"expert: whole": n}}))
    run_stage(run, "generate", [sys.executable, "-c", "pass"])
    run_stage(run, "vh_generate", [sys.executable, "-c", "pass"])
    table = write_report(run, tmp_path / "assets")
    md = (run / "results.md").read_text()
    assert table in md and "| generate |" in md and "| vh_generate |" in md
    assert "## Training pairs, ALFWorld\n\n7 pairs: expert 7" in md
    assert "## Training pairs, VirtualHome\n\n3 pairs: expert 3" in md
    assert "| ALFWorld stages |" in md and "| VirtualHome stages |" in md and "| total (stages run" in md
    for name in ("success.png", "step_rewards.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "assets" / f"demo_{name}").is_file()


def test_report_of_an_old_run_without_virtualhome(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "sft_more": (3, 2), "steca": (5, 4)})
    run_stage(run, "generate", [sys.executable, "-c", "pass"])
    md_table = write_report(run)
    md = (run / "results.md").read_text()
    assert md_table in md and MISSING in md_table and "VirtualHome" not in md.split(md_table)[1]
    assert (run / "success.png").is_file()


def test_stage_environment():
    assert environment_of("vh_sft").name == "VirtualHome"
    assert environment_of("sft").name == environment_of("eval_steca_dev").name == "ALFWorld"


def test_mean_sd_and_seed_table(tmp_path):
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_sd([5.0]) == (5.0, 0.0)
    runs = [_fake_run(tmp_path / f"s{i}", {"sft": (i, i), "sft_more": (2, 2), "steca": (4 + i, 3)},
                      vh_wins={"sft": (2 * i, 0), "sft_more": (4, 4), "steca": (6, 2)}) for i in range(3)]
    # an older run without the VirtualHome block adds to the ALFWorld columns only
    runs.append(_fake_run(tmp_path / "old", {"sft": (1, 1), "sft_more": (2, 2), "steca": (4, 3)}))
    per_run = [load_results(r) for r in runs]
    table = format_seed_table(per_run)
    # ALFWorld seen over 4 runs: mean 10, sd sqrt((100 + 0 + 100 + 0) / 3) = 8.16; VirtualHome over 3
    assert "| SFT (base agent) | 10.0 ± 8.2 (0.0, 10.0, 20.0, 10.0) | 10.0 ± 8.2 (0.0, 10.0, 20.0, 10.0) " \
           "| 10.0 ± 10.0 (0.0, 10.0, 20.0) | 0.0 ± 0.0 (0.0, 0.0, 0.0) |" in table
    assert format_seed_table([load_results(runs[-1])]).count(MISSING) == 2 * 3
    for i, r in enumerate(runs):
        run_stage(r, "sft", [sys.executable, "-c", "pass"])
        if i < 3:
            run_stage(r, "vh_sft", [sys.executable, "-c", "pass"])
    out = tmp_path / "seeds.md"
    assert write_seed_report(runs, out) == table
    text = out.read_text()
    assert out.with_suffix(".png").is_file() and table in text
    assert "| run | wall s | CPU s | ALFWorld wall s | ALFWorld CPU s | VirtualHome wall s | VirtualHome CPU s |" in text
    old_row = next(line for line in text.splitlines() if line.startswith("| old |"))
    assert old_row.endswith(f"| {MISSING} | {MISSING} |")


def test_run_demo_script_is_valid_bash():
    import subprocess

    subprocess.run(["bash", "-n", str(REPO / "run_demo.sh")], check=True)


def test_framework_diagram_script(tmp_path):
    import subprocess

    out = tmp_path / "framework.png"
    subprocess.run([sys.executable, str(REPO / "assets" / "make_framework_diagram.py"), "--output", str(out)], check=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_elapsed_wall_counts_side_by_side_stages_once():
    t = lambda start, stop: StageTiming("s", [], stop - start, 0.0, stop)
    # two stages side by side (0-10 and 2-8), then a gap, then one more (20-25)
    assert elapsed_wall([t(0, 10), t(2, 8), t(20, 25)]) == 15
    assert elapsed_wall([t(0, 10), t(5, 12)]) == 12
    # a chain of two stages (0-4, 4-9) beside one long stage (0-10), as run_demo.sh's `side` runs them
    assert elapsed_wall([t(0, 4), t(4, 9), t(0, 10)]) == 10
    # markers are read in finishing order, not starting order: a long stage that finished last
    assert elapsed_wall(sorted([t(3, 5), t(0, 20), t(6, 8)], key=lambda x: x.finished_at)) == 20
    assert elapsed_wall([]) == 0
