"""Reliability of interrupted and concurrent runs (failures 3, 5, 6): Ctrl-C stops every part of a
sampling script, one writer per output, a complete last record is kept, an output never overwrites
an input, and the joined output does not depend on how the parts ran.

The interrupted run is deterministic without any sleep: its parts talk to a loopback
OpenAI-compatible server that holds every request until the test has sent the signal.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from method_fixtures import expert_rewards, expert_sft

from eval_agent.storage import JsonlSink, OutputLockedError, lock_output
from steca.collection.collect_cli import main as collect_main
from steca.records import load_sft, write_records
from steca.sampling.join_parts import join_parts
from steca.sampling.sampling_cli import main as sampling_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ctrl_c_deliverable():
    """SIGINT at its default disposition in the scripts these tests start. A test runner started in the
    background (``cmd &`` from a script, nohup) ignores SIGINT, its children inherit that, and bash cannot
    trap a signal that was ignored when it started, so the scripts would never see the Ctrl-C. A terminal's
    Ctrl-C finds the default; put it back for the test (Python's handler resets to the default at exec)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


# ------------------------------------------------------------------ one writer, whole records
def _lines(n: int) -> str:
    return "".join(json.dumps({"id": f"t{i}", "iteration": i}) + "\n" for i in range(n))


def test_a_second_writer_of_an_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with JsonlSink(out) as sink:
        sink.write({"id": "a", "iteration": 0})
        with pytest.raises(OutputLockedError, match="being written by another process"):
            JsonlSink(out)
    with JsonlSink(out) as sink:  # released on close
        sink.write({"id": "a", "iteration": 1})
    assert len(out.read_text().splitlines()) == 2


def test_a_stage_run_on_a_locked_output_exits_with_a_clear_message(tmp_path: Path, alfworld_data: Path,
                                                                   alfworld_sft_sample: Path) -> None:
    sft = tmp_path / "sft.json"
    write_records(sft, load_sft(alfworld_sft_sample, strict=True).records[:1])
    out = tmp_path / "expert.jsonl"
    held = lock_output(out)  # another run writing this output
    try:
        with pytest.raises(OutputLockedError, match=str(out)):
            sampling_main(["expert_steps", "--env", "alfworld", "--env_data", str(alfworld_data), "--sft", str(sft),
                           "--output", str(out), "--log_level", "WARNING"])
    finally:
        held.close()
    assert not out.exists() or out.read_text() == ""


def test_a_second_evaluation_of_one_output_folder_exits_with_a_clear_message(tmp_path: Path,
                                                                            virtualhome_data: Path) -> None:
    from eval_agent.main import main as eval_main

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text((virtualhome_data / "vh_seen_test.jsonl").read_text().splitlines()[0] + "\n")
    out = tmp_path / "eval"
    args = ["--exp_config", "virtualhome", "--split", "dev", "--agent_config", "expert", "--data_dir",
            str(virtualhome_data), "--test_path", str(tasks), "--num_workers", "0", "--output_path", str(out)]
    held = lock_output(out)  # another evaluation writing this folder
    try:
        with pytest.raises(SystemExit, match=f"{out} is being written by another process"):
            eval_main(args)
    finally:
        held.close()
    assert not out.exists()
    assert eval_main(args)["n_tasks"] == 1 and (out / "summary.json").exists()
    lock_output(out).close()  # released when the evaluation ends


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path: Path) -> None:
    """Failure 6: it was counted as done, then cut as a torn line, and lost."""
    out = tmp_path / "out.jsonl"
    out.write_text(_lines(2) + json.dumps({"id": "t2", "iteration": 2}))
    with JsonlSink(out) as sink:
        assert sink.finished_keys(lambda o: (o["id"], o["iteration"])) == {("t0", 0), ("t1", 1), ("t2", 2)}
    assert out.read_text() == _lines(3)
    out.write_text(_lines(2) + '{"id": "t2", "itera')  # a torn line is still cut
    with JsonlSink(out) as sink:
        assert len(sink.finished_keys(lambda o: (o["id"], o["iteration"]))) == 2
    assert out.read_text() == _lines(2)


def test_resume_keeps_a_record_without_newline_and_writes_no_duplicate(tmp_path: Path, alfworld_data: Path,
                                                                      alfworld_sft_sample: Path) -> None:
    sft = tmp_path / "sft.json"
    write_records(sft, load_sft(alfworld_sft_sample, strict=True).records[:1])
    out = tmp_path / "expert.jsonl"
    args = ["expert_steps", "--env", "alfworld", "--env_data", str(alfworld_data), "--sft", str(sft), "--output",
            str(out), "--log_level", "WARNING"]
    sampling_main(args)
    full = out.read_bytes()
    out.write_bytes(full[:-1])  # the writer was killed between the last record and its newline
    report = sampling_main(args)
    assert report["written"] == 0 and out.read_bytes() == full


def test_an_output_equal_to_an_input_is_refused(tmp_path: Path) -> None:
    """Failure 5: ``--output`` equal to the input file destroyed the input."""
    steps = tmp_path / "steps.jsonl"
    write_records(steps, expert_rewards())
    before = steps.read_bytes()
    with pytest.raises(ValueError, match="is also an input"):
        sampling_main(["mc", "--steps", str(steps), "--output", str(steps), "--model_path", "m"])
    write_records(tmp_path / "sft.json", [expert_sft()])
    with pytest.raises(ValueError, match="is also an input"):
        collect_main("expert", "alfworld", ["--sft", str(tmp_path / "sft.json"), "--expert_steps", str(steps),
                                            "--explore_steps", str(steps), "--output", str(steps)])
    assert steps.read_bytes() == before


def test_joined_parts_are_in_one_order_and_never_overlap(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"id": "t2", "iteration": 0}) + "\n" + json.dumps({"id": "t1", "iteration": 3}) + "\n")
    b.write_text(json.dumps({"id": "t1", "iteration": 1}) + "\n")
    join_parts([a, b], tmp_path / "ab.jsonl")
    join_parts([b, a], tmp_path / "ba.jsonl")
    assert (tmp_path / "ab.jsonl").read_bytes() == (tmp_path / "ba.jsonl").read_bytes()
    keys = [(o["id"], o["iteration"]) for o in map(json.loads, (tmp_path / "ab.jsonl").read_text().splitlines())]
    assert keys == [("t1", 1), ("t1", 3), ("t2", 0)]
    b.write_text(b.read_text() + json.dumps({"id": "t2", "iteration": 0}) + "\n")
    with pytest.raises(ValueError, match="the parts overlap"):
        join_parts([a, b], tmp_path / "x.jsonl")


# ------------------------------------------------------------------ Ctrl-C on a script with parts
class HoldingServer(ThreadingHTTPServer):
    """Chat completions that wait for ``release`` (set: answer at once) before answering."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HoldingHandler)
        self.release = threading.Event()
        self.arrived = threading.Semaphore(0)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class HoldingHandler(BaseHTTPRequestHandler):
    server: HoldingServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.arrived.release()
        self.server.release.wait()
        body = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": req["model"],
                           "choices": [{"index": 0, "finish_reason": "stop", "message": {
                               "role": "assistant", "content": "Thought: I look.\nAction: look"}}]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client was stopped meanwhile
            pass


def _processes_in_groups(groups: set[int], field: int = 2) -> list[int]:
    """Live processes whose process group (``field`` 2 of /proc/PID/stat after the name; 3: session) is in ``groups``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] != "Z" and int(fields[field]) in groups:
                found.append(int(d.name))
    return found


def _part_pids(out_dir: Path) -> set[int]:
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "run_sampling.py" in cmd and str(out_dir) in cmd:
                pids.add(int(d.name))
    return pids


def test_ctrl_c_stops_every_part_and_the_rerun_writes_no_duplicate(tmp_path: Path, alfworld_data: Path,
                                                                   alfworld_sft_sample: Path,
                                                                   ctrl_c_deliverable: None) -> None:
    """Failure 3: Ctrl-C left the background parts running; the rerun wrote duplicates."""
    sft = tmp_path / "sft.json"
    write_records(sft, load_sft(alfworld_sft_sample, strict=True).records[:4])
    out_dir = tmp_path / "sampling"
    held = HoldingServer()
    threading.Thread(target=held.serve_forever, daemon=True).start()
    env = {**os.environ, "PYTHONPATH": str(REPO), "ENV_DATA": str(alfworld_data), "SFT_FILE": str(sft),
           "OUT_DIR": str(out_dir), "BACKEND": "openai", "API_BASE": held.base_url, "MODEL_PATH": "m",
           "PART_NUM": "2", "MAX_STEPS": "2", "MAX_NEW_TOKENS": "8", "MAX_ACTIVE": "4"}
    script = ["bash", "sampling/alfworld/explore_generate_response.sh"]
    proc = subprocess.Popen(script, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(2):  # both parts are waiting for an answer: the run is in the middle of its work
            assert held.arrived.acquire(timeout=600)
        parts = _part_pids(out_dir)
        assert len(parts) == 2
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    finally:
        held.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "got SIGINT" in err
    assert _processes_in_groups(parts) == []  # no part, and no process a part started, is left
    # the rerun against a server that answers finishes the work, each record once
    held.shutdown()
    healthy = HoldingServer()
    healthy.release.set()
    threading.Thread(target=healthy.serve_forever, daemon=True).start()
    done = subprocess.run(script, cwd=REPO, env={**env, "API_BASE": healthy.base_url}, capture_output=True,
                          text=True, timeout=900)
    healthy.shutdown()
    assert done.returncode == 0, done.stderr[-3000:]
    keys = Counter((o["id"], o["iteration"]) for o in map(json.loads, (out_dir / "explore_steps.jsonl").open()))
    # (with MAX_STEPS=2 the prefixes t >= 2 leave no step to explore: they go to the problems file)
    assert set(keys) == {(r.id, t) for r in load_sft(sft).records for t in range(2)} and max(keys.values()) == 1


# ------------------------------------------------------------------ every script with background parts
# (run_demo.sh's side-by-side stages use the same start_part; the demo itself is too long to run here)
PARTS_SCRIPT = """
source scripts/stage_common.sh
stop_parts_on_signals parts_test
chain() { touch "$1.started"; sleep 300; echo "not stopped" > "$1.end"; }  # a function: a part that runs stages
start_part chain "$OUT/a" > "$OUT/a.log" 2>&1
start_part python -c "import pathlib, time; pathlib.Path('$OUT/b.started').touch(); time.sleep(300)"
echo "pids ${part_pids[*]}"
for pid in "${part_pids[@]}"; do wait "$pid"; done
"""


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_script_forwards_ctrl_c_and_sigterm_to_its_background_parts(tmp_path: Path, sig: signal.Signals,
                                                                       status: int, ctrl_c_deliverable: None) -> None:
    proc = subprocess.Popen(["bash", "-c", PARTS_SCRIPT], cwd=REPO, env={**os.environ, "OUT": str(tmp_path)},
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = {int(p) for p in proc.stdout.readline().split()[1:]}
        assert len(pids) == 2
        while not all((tmp_path / f"{n}.started").exists() for n in "ab"):
            assert proc.poll() is None
            time.sleep(0.05)
        os.kill(proc.pid, sig)  # the script alone, as a non-interactive parent sends it
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == status and f"parts_test: got {sig.name}; stopping 2 part(s)" in err
    assert _processes_in_groups(pids) == []  # each part and the `sleep` it ran in the foreground
    assert not (tmp_path / "a.end").exists()


# ------------------------------------------------------------------ run_demo.sh's two environments side by side
# (scripts/demo_jobs.sh: `side` runs ALFWorld's stages two at a time, `beside` VirtualHome's chain next to them)
DEMO_JOBS_PRELUDE = """
set -euo pipefail
source scripts/stage_common.sh
source scripts/demo_jobs.sh
side_names=(); side_pids=(); beside_pid=; beside_name=
"""
JOBS_SCRIPT = DEMO_JOBS_PRELUDE + """stop_parts_on_signals jobs_test
trap stop_beside EXIT
OUT_DIR=$OUT JOBS=2 ENVS_BESIDE=true BESIDE_PRIORITY=idle
vh_chain() { touch "$OUT/vh.started"; sleep "$VH_SLEEP"; if [[ $VH_FAIL == 1 ]]; then echo "vh went wrong"; exit 3; fi
             touch "$OUT/vh.end"; }
alf_stage() { touch "$OUT/alf_$2.started"; sleep "$ALF_SLEEP"; if [[ $1 == fail ]]; then echo "alf went wrong"; return 4; fi
              touch "$OUT/alf_$2.end"; }
beside virtualhome vh_chain
echo "beside $beside_pid"
side alf_a alf_stage ok a
side alf_b alf_stage "$ALF_B" b
joined
beside_joined
echo "all joined"
"""


def _sigterm_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 60) -> str:
    """Wait until ``ready()`` (failing if ``proc`` ends first), send SIGTERM to ``proc`` alone, and return its
    stderr once it exits (``proc`` is killed if it does not)."""
    try:
        while not ready():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        return proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            proc.kill()


def _run_jobs(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(["bash", "-c", JOBS_SCRIPT], cwd=REPO, start_new_session=True, text=True,
                            env={**os.environ, "OUT": str(tmp_path), **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    assert first.startswith("started virtualhome beside the next stages"), first
    return proc, int(proc.stdout.readline().split()[1])


def test_the_environment_beside_runs_next_to_the_side_stages_and_is_joined(tmp_path: Path) -> None:
    proc, _ = _run_jobs(tmp_path, VH_SLEEP="1", VH_FAIL="0", ALF_SLEEP="2", ALF_B="ok")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    # the chain beside finished while both side stages ran: three at once, and all three were waited for
    assert (tmp_path / "vh.end").stat().st_mtime < (tmp_path / "alf_a.end").stat().st_mtime
    assert all((tmp_path / f"{n}.end").exists() for n in ("vh", "alf_a", "alf_b"))
    assert out.index("finished alf_b") < out.index("finished virtualhome") < out.index("all joined")


def test_a_failed_stage_stops_the_environment_beside_it(tmp_path: Path) -> None:
    proc, vh_pid = _run_jobs(tmp_path, VH_SLEEP="300", VH_FAIL="0", ALF_SLEEP="0.5", ALF_B="fail")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "all joined" not in out
    assert "stage alf_b failed" in err and "alf went wrong" in err
    assert "stopping virtualhome (rerun this script to resume it)" in err
    assert _processes_in_groups({vh_pid}) == [] and not (tmp_path / "vh.end").exists()  # its `sleep` too


def test_a_failed_environment_beside_fails_the_run_and_shows_its_log(tmp_path: Path) -> None:
    proc, _ = _run_jobs(tmp_path, VH_SLEEP="0.2", VH_FAIL="1", ALF_SLEEP="1", ALF_B="ok")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "all joined" not in out
    assert (tmp_path / "alf_a.end").exists() and (tmp_path / "alf_b.end").exists()  # the side stages finished
    assert f"virtualhome failed; the end of {tmp_path}/logs/virtualhome.log:" in err and "vh went wrong" in err


def test_sigterm_stops_the_side_stages_and_the_environment_beside(tmp_path: Path) -> None:
    proc, _ = _run_jobs(tmp_path, VH_SLEEP="300", VH_FAIL="0", ALF_SLEEP="300", ALF_B="ok")
    err = _sigterm_when(proc, lambda: all((tmp_path / f"{n}.started").exists() for n in ("vh", "alf_a", "alf_b")))
    assert proc.returncode == 143 and "jobs_test: got SIGTERM; stopping 3 part(s)" in err, err
    assert _processes_in_groups({proc.pid}, field=3) == []  # nothing of the script's session is left
    assert not any((tmp_path / f"{n}.end").exists() for n in ("vh", "alf_a", "alf_b"))


PRIORITY_SCRIPT = DEMO_JOBS_PRELUDE + """OUT_DIR=$OUT JOBS=2 ENVS_BESIDE=true
policy() { python3 -c "import os, sys; print(sys.argv[1], os.sched_getscheduler(0), os.nice(0))" "$1"; }
beside vh policy beside
side alf policy side
joined
beside_joined
policy script
"""


@pytest.mark.parametrize("priority", ["idle", "normal"])
def test_the_environment_beside_runs_at_its_priority_and_the_side_stages_at_the_script_s(tmp_path: Path,
                                                                                          priority: str) -> None:
    """BESIDE_PRIORITY=idle: the chain beside (and every process it starts) runs under SCHED_IDLE, so it only
    gets the CPU time the side stages leave idle; the side stages and the script keep their priority."""
    proc = subprocess.run(["bash", "-c", PRIORITY_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OUT": str(tmp_path), "BESIDE_PRIORITY": priority})
    assert proc.returncode == 0, proc.stderr
    normal = f"{os.sched_getscheduler(0)} {os.nice(0)}"
    beside = f"{os.SCHED_IDLE} {os.nice(0)}" if priority == "idle" else normal
    assert (tmp_path / "logs" / "vh.log").read_text().splitlines()[-1] == f"beside {beside}"
    assert (tmp_path / "logs" / "alf.log").read_text().splitlines()[-1] == f"side {normal}"
    assert proc.stdout.splitlines()[-1] == f"script {normal}"


POOL_SCRIPT = DEMO_JOBS_PRELUDE + """stop_parts_on_signals pool_test
OUT_DIR=$OUT JOBS=2
timed() { touch "$OUT/$1.started"; sleep "$2"; if [[ $3 == fail ]]; then echo "$1 went wrong"; return 5; fi; touch "$OUT/$1.end"; }
side short timed short 0.3 "$SHORT"
side long timed long 2 ok
side third timed third 0.3 ok
joined
echo "all joined"
"""


def test_side_starts_the_next_stage_when_any_one_ends(tmp_path: Path) -> None:
    """JOBS=2: the third stage starts when the short one ends, while the long one still runs."""
    proc = subprocess.run(["bash", "-c", POOL_SCRIPT], cwd=REPO, env={**os.environ, "OUT": str(tmp_path), "SHORT": "ok"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    started = {n: (tmp_path / f"{n}.started").stat().st_mtime for n in ("short", "long", "third")}
    ended = {n: (tmp_path / f"{n}.end").stat().st_mtime for n in ("short", "long", "third")}
    assert ended["short"] <= started["third"] < ended["long"]
    out = proc.stdout
    assert out.index("finished short") < out.index("started third") < out.index("finished long") < out.index("all joined")


def test_a_failed_stage_in_the_pool_starts_no_further_stage(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", "-c", POOL_SCRIPT], cwd=REPO, env={**os.environ, "OUT": str(tmp_path), "SHORT": "fail"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "all joined" not in proc.stdout
    assert f"stage short failed; the end of {tmp_path}/logs/short.log:" in proc.stderr and "short went wrong" in proc.stderr
    assert (tmp_path / "long.end").exists() and not (tmp_path / "third.started").exists()  # the running one was waited for


def test_sigterm_to_a_several_seeds_demo_stops_the_seed_it_runs(tmp_path: Path) -> None:
    """``SEEDS="0 1" run_demo.sh`` runs each seed as a part: SIGTERM during seed 0's first stage stops that
    stage and its run, starts no further seed, and leaves no process of the run behind."""
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEEDS": "0 1", "RUNS_DIR": str(runs), "SKIP_INSTALL": "true",
           "ASSETS_DIR": "", "VH": "false"}
    proc = subprocess.Popen(["bash", "run_demo.sh"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # SIGTERM once seed 0's run is inside its first stage
        err = _sigterm_when(proc, (runs / "demo_seed0" / "logs" / "stages" / "generate.log").exists, timeout=120)
    finally:
        left = _processes_in_groups({proc.pid}, field=3)
        for pid in left:  # whatever a failing run left behind
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 143 and "run_demo.sh (SEEDS): got SIGTERM; stopping 1 part(s)" in err, err[-2000:]
    assert left == []  # nothing of the run's session is left
    assert not (runs / "demo_seed0" / ".stages" / "generate.json").exists() and not (runs / "demo_seed1").exists()


def test_every_script_starts_its_background_parts_with_start_part() -> None:
    """A bare ``cmd &`` in a stage script would ignore Ctrl-C and outlive the script."""
    bare = []
    for script in sorted(REPO.rglob("*.sh")):
        if script.name == "stage_common.sh" or ".git" in script.parts:
            continue
        for n, line in enumerate(script.read_text().splitlines(), 1):
            code = line.split("#")[0].replace("&&", "").replace("2>&1", "").replace(">&2", "").replace("&>", "")
            if "&" in code:
                bare.append(f"{script.relative_to(REPO)}:{n}: {line.strip()}")
    assert bare == []
