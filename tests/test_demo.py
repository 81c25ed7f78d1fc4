"""The demo's orchestration pieces: stage markers (skip finished, rerun failed), subset, step counts,
the results table / results.md / plots from small hand-built run folders. The full demo is not run here."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from steca.demo.__main__ import main as demo_main
from steca.demo.prep import take_subset, training_steps
from steca.demo.results import (SplitResult, elapsed_wall, format_seed_table, format_table, load_results, mean_sd,
                                step_reward_curve, write_report, write_seed_report)
from steca.demo.stages import StageTiming, is_done, marker_path, read_timings, run_stage
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


def _fake_run(root: Path, wins: dict[str, tuple[int, int]], n: int = 10) -> Path:
    """A run folder with eval summaries: wins[method] = (seen wins, unseen wins) out of n each."""
    for method, (seen, unseen) in wins.items():
        for split, w in (("dev", seen), ("test", unseen)):
            d = root / "eval" / method / split
            d.mkdir(parents=True)
            (d / "summary.json").write_text(json.dumps({"n_tasks": n, "n_success": w, "success_rate": w / n}))
    samp = root / "sampling"
    samp.mkdir(parents=True, exist_ok=True)
    recs = [StepRecord("a", t, "g", "x", [Message("assistant", "x")], None, 1.0, r)
            for t, r in enumerate([0.2, 0.5, 1.0])]
    recs += [StepRecord("b", t, "g", "x", [Message("assistant", "x")], None, 1.0, r)
             for t, r in enumerate([0.4, 0.5])]
    write_records(samp / "expert_steps_mc.jsonl", recs)
    return root


def test_load_results_and_table(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "sft_more": (3, 2), "steca": (5, 4)})
    res = load_results(run)
    assert res["steca"]["dev"] == SplitResult(10, 5)
    table = format_table(res)
    assert "| STeCa (offline stand-in reflections) | 50.0 (5/10) | 40.0 (4/10) |" in table
    assert "| SFT (base agent) | 20.0 (2/10) | 10.0 (1/10) |" in table


def test_missing_results_show_na_and_bad_summary_names_file(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1)})
    assert "| STeCa (offline stand-in reflections) | n/a | n/a |" in format_table(load_results(run))
    (run / "eval" / "sft" / "dev" / "summary.json").write_text(json.dumps({"n_tasks": "ten"}))
    with pytest.raises(ValueError, match=r"summary.json.*n_tasks"):
        load_results(run)


def test_step_reward_curve(tmp_path):
    run = _fake_run(tmp_path / "r", {})
    curve = step_reward_curve(run / "sampling" / "expert_steps_mc.jsonl")
    assert curve[0] == (pytest.approx(0.3), 2)
    assert curve[2] == (1.0, 1)


def test_report_writes_results_md_and_plots(tmp_path):
    run = _fake_run(tmp_path / "r", {"sft": (2, 1), "sft_more": (3, 2), "steca": (5, 4)})
    run_stage(run, "generate", [sys.executable, "-c", "pass"])
    table = write_report(run, tmp_path / "assets")
    md = (run / "results.md").read_text()
    assert table in md and "| generate |" in md
    for name in ("success.png", "step_rewards.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "assets" / f"demo_{name}").is_file()


def test_mean_sd_and_seed_table(tmp_path):
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_sd([5.0]) == (5.0, 0.0)
    runs = [_fake_run(tmp_path / f"s{i}", {"sft": (i, i), "sft_more": (2, 2), "steca": (4 + i, 3)}) for i in range(3)]
    per_run = [load_results(r) for r in runs]
    table = format_seed_table(per_run)
    assert "| SFT (base agent) | 10.0 ± 10.0 (0.0, 10.0, 20.0) |" in table
    out = tmp_path / "seeds.md"
    assert write_seed_report(runs, out) == table
    assert out.with_suffix(".png").is_file() and table in out.read_text()


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
    assert elapsed_wall([]) == 0
