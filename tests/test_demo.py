"""The demo's orchestration pieces: stage markers (skip finished, rerun failed), subset, step counts, the
stage-time arithmetic. The report is tested in test_demo_report.py; the full demo is not run here."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from steca.demo.__main__ import main as demo_main
from steca.demo.prep import take_subset, training_steps
from steca.demo.report import elapsed_wall
from steca.demo.stage_markers import StageTiming, is_done, marker_path, read_timings, run_stage
from steca.records import PairRecord, SFTRecord, load_sft, write_records
from image_checks import colored_fraction, image_size
from eval_agent.types import Message

REPO = Path(__file__).resolve().parents[1]


def _counter_cmd(counter: Path, fail: bool = False) -> list[str]:
    """A command that appends a line to ``counter`` (so we can count runs) and optionally fails."""
    code = f"open({str(counter)!r}, 'a').write('x\\n'); raise SystemExit({1 if fail else 0})"
    return [sys.executable, "-c", code]


def test_stage_runs_once_and_rerun_skips(tmp_path):
    counter = tmp_path / "count.txt"
    first = run_stage(tmp_path, "gen", _counter_cmd(counter))
    assert first is not None and first.name == "gen"
    assert is_done(tmp_path, "gen")
    assert run_stage(tmp_path, "gen", _counter_cmd(counter)) is None
    assert counter.read_text().count("x") == 1
    marker = json.loads(marker_path(tmp_path, "gen").read_text())
    assert marker["name"] == "gen" and marker["command"][0] == sys.executable


def test_stage_timing_counts_the_commands_own_cpu_time(tmp_path):
    """The CPU time of a stage includes what its command used (here ~0.3 s, as the child reports it)."""
    report = tmp_path / "child_cpu.txt"
    code = ("import resource, time\n"
            "t = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\n"
            "u = resource.getrusage(resource.RUSAGE_SELF)\n"
            f"open({str(report)!r}, 'w').write(str(u.ru_utime + u.ru_stime))")
    timing = run_stage(tmp_path, "busy", [sys.executable, "-c", code])
    child = float(report.read_text())
    assert child >= 0.3 and timing.cpu_s >= child - 0.01 and timing.wall_s >= child - 0.01
    marker = json.loads(marker_path(tmp_path, "busy").read_text())
    assert (marker["wall_s"], marker["cpu_s"]) == (timing.wall_s, timing.cpu_s)


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


def test_framework_diagram_script(tmp_path):
    import subprocess

    out = tmp_path / "framework.png"
    subprocess.run([sys.executable, str(REPO / "assets" / "make_framework_diagram.py"), "--output", str(out)], check=True)
    height, width = image_size(out)
    assert width > height > 100 and colored_fraction(out) > 0.05  # the coloured stage boxes


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


def test_stage_output_goes_to_its_log_and_a_failure_shows_its_end(tmp_path, capfd, caplog):
    log = tmp_path / "logs" / "noisy.log"
    noisy = "import sys; print('progress 50%'); print('UserWarning: library noise', file=sys.stderr)"
    assert demo_main(["stage", "--run_dir", str(tmp_path), "--name", "noisy", "--log", str(log), "--",
                      sys.executable, "-c", noisy]) == 0
    out, err = capfd.readouterr()
    assert "library noise" not in out + err and "progress 50%" not in out + err
    assert "progress 50%" in log.read_text() and "UserWarning: library noise" in log.read_text()
    failing = "import sys; print('the reason it failed'); raise SystemExit(4)"
    assert demo_main(["stage", "--run_dir", str(tmp_path), "--name", "bad", "--log", str(tmp_path / "bad.log"), "--",
                      sys.executable, "-c", failing]) == 4
    assert "the reason it failed" not in capfd.readouterr().err.split("the end of its log")[0]
    assert "stage bad failed with exit status 4" in caplog.text and "the reason it failed" in caplog.text
    assert not is_done(tmp_path, "bad")


@pytest.mark.parametrize("value", ["gpt-9", "/nowhere/model"])
def test_demo_refuses_an_unknown_reflector_before_any_stage(value, tmp_path):
    import os
    import subprocess
    env = {**os.environ, "REFLECTOR": value, "SKIP_INSTALL": "true", "RUNS_DIR": str(tmp_path / "runs")}
    out = subprocess.run(["bash", str(REPO / "run_demo.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert f"REFLECTOR must be offline, smollm2, auto or a model folder, not '{value}'" in out.stderr
    assert not (tmp_path / "runs" / "demo_seed0" / ".stages").exists()


def test_a_failure_shows_a_ranks_abort_above_the_launchers_summary(tmp_path, caplog):
    log = tmp_path / "dist.log"
    log.write_text("an old run's Traceback that must not be shown\n")
    # a rank's C++ abort, then twenty-five lines of launcher summary, as torchrun prints them
    script = ("import sys\nprint('step 1 ok')\nprint(\"terminate called after throwing an instance of 'gloo::IoException'\")\n"
              "for i in range(25): print(f'summary line {i}')\nsys.exit(1)")
    assert demo_main(["stage", "--run_dir", str(tmp_path), "--name", "dist", "--log", str(log), "--",
                      sys.executable, "-c", script]) == 1
    assert "gloo::IoException" in caplog.text and "summary line 24" in caplog.text
    assert "summary line 2\n" not in caplog.text  # above the last twenty lines and not an error line
    assert "an old run's" not in caplog.text and "step 1 ok" not in caplog.text


def test_an_unknown_demo_profile_is_refused_before_any_stage(tmp_path):
    import os
    import subprocess
    env = {**os.environ, "DEMO_PROFILE": "huge", "SKIP_INSTALL": "true", "RUNS_DIR": str(tmp_path / "runs")}
    out = subprocess.run(["bash", str(REPO / "run_demo.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "DEMO_PROFILE must be default, full or gpu, not 'huge'" in out.stderr
    assert not (tmp_path / "runs").exists()


def _demo_settings(**env: str) -> dict[str, str]:
    """The values run_demo.sh would use (SETTINGS_ONLY=true) under ``env``."""
    import os
    import subprocess
    clean = {k: v for k, v in os.environ.items() if k not in ("DEMO_PROFILE", "DEVICE", "N_SEEN", "MODEL_SIZE")}
    out = subprocess.run(["bash", str(REPO / "run_demo.sh")], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**clean, "SETTINGS_ONLY": "true", **env})
    assert out.returncode == 0, out.stderr
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


def test_the_gpu_profile_sets_the_device_the_larger_model_and_200_games_and_the_environment_wins():
    default, gpu = _demo_settings(), _demo_settings(DEMO_PROFILE="gpu", N_SEEN="7")
    assert (default["DEVICE"], default["MODEL_SIZE"], default["N_SEEN"], default["RUNS_DIR"]) == ("cpu", "mini", "40", "runs")
    assert (gpu["DEVICE"], gpu["MODEL_SIZE"], gpu["VH_MODEL_SIZE"], gpu["RUNS_DIR"]) == ("cuda", "small", "small", "runs_gpu")
    assert (gpu["N_UNSEEN"], gpu["N_SEEN"], gpu["SEEDS"], gpu["BASELINES"]) == ("200", "7", "", "false")
    assert len(default) > 60 and set(default) == set(gpu)  # every editable variable, and only those


def test_the_gpu_profile_is_refused_on_a_machine_without_a_gpu(tmp_path):
    import os
    import subprocess

    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    for env in ({"DEMO_PROFILE": "gpu"}, {"DEVICE": "cuda"}):
        out = subprocess.run(["bash", str(REPO / "run_demo.sh")], cwd=REPO, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "SKIP_INSTALL": "true", "RUNS_DIR": str(tmp_path / "runs"), **env})
        assert out.returncode == 2 and "needs a CUDA GPU, and torch sees none here" in out.stderr, out.stderr
        assert not (tmp_path / "runs").exists()
    out = subprocess.run(["bash", str(REPO / "run_demo.sh")], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SKIP_INSTALL": "true", "RUNS_DIR": str(tmp_path / "runs"), "DEVICE": "tpu"})
    assert out.returncode == 2 and "DEVICE must be cpu or cuda, not 'tpu'" in out.stderr


def test_the_full_profile_runs_its_seeds_with_its_defaults_and_the_environment_wins(tmp_path):
    """DEMO_PROFILE=full starts seed 0 of its three seeds with 1200/200 games; N_UNSEEN from the environment
    wins. Stopped (SIGTERM) inside the first stage."""
    import os
    import signal
    import subprocess
    import time
    runs = tmp_path / "runs"
    env = {**os.environ, "DEMO_PROFILE": "full", "SKIP_INSTALL": "true", "RUNS_DIR": str(runs), "N_UNSEEN": "7",
           "ASSETS_DIR": "", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(["bash", "run_demo.sh"], cwd=REPO, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not (runs / "demo_seed0" / "logs" / "stages" / "generate.log").exists():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"--output_dir {runs}/demo_seed0/bench --seed 0 --n_train 1200 --n_seen 200 --n_unseen 7 --size tiny" in err
    assert "run_demo.sh (SEEDS): got SIGTERM" in err and not (runs / "demo_seed1").exists()
