"""The stage scripts' allocator setting against glibc's defaults, side by side, on the same command.

``scripts/stage_common.sh`` exports ``GLIBC_TUNABLES`` (an mmap threshold of 32 MiB and a trim threshold
of 256 MiB) unless ``MALLOC_TUNING=false``: glibc otherwise returns freed large blocks to the kernel,
and a process that allocates tensors of changing sizes step after step faults their pages in again.
This benchmark starts the same command twice at the same moment, once with glibc's defaults and once
with the setting (so both share the machine's load alike), and prints each one's wall time, user and
system CPU seconds, minor page faults and peak memory, then ``ratio=<default wall / tuned wall>``.

    python benchmarks/allocator.py --model_dir runs/demo_seed0/models/sft --data_dir runs/demo_seed0/bench
    python benchmarks/allocator.py -- python benchmarks/rollout_throughput.py   # any command

The default command is the demo's greedy evaluation (``python -m eval_agent.main``, seen split, 128 episodes
in flight, 20 steps, 64 new tokens, CPU) of ``--model_dir`` on ``--data_dir``'s games, in one thread.
There the setting matters: KV caches of a whole batch grow every turn. It does not for
``rollout_throughput.py`` (ratio 1.01, 2.2 vs 1.6 s of system time): a nano model and a few episodes
allocate little. The setting changes where memory comes from, never a computed value.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tuned_value() -> str:
    """The ``GLIBC_TUNABLES`` value that ``scripts/stage_common.sh`` exports (read from the script)."""
    text = (ROOT / "scripts" / "stage_common.sh").read_text(encoding="utf-8")
    match = re.search(r"export GLIBC_TUNABLES=(\S+)", text)
    if match is None:
        raise SystemExit("scripts/stage_common.sh exports no GLIBC_TUNABLES")
    return match.group(1)


def demo_evaluation(model_dir: str, data_dir: str) -> list[str]:
    """The demo's greedy ALFWorld evaluation (seen split) of ``model_dir``; ``{output}`` marks the output folder."""
    command = [sys.executable, "-m", "eval_agent.main", "--exp_config", "alfworld", "--split", "dev",
               "--agent_config", "hf", "--model_name", model_dir, "--data_dir", data_dir,
               "--output_path", "{output}", "--override", "--num_workers", "0", "--max_active", "128",
               "--icl_num", "0", "--max_steps", "20", "--max_new_tokens", "64", "--device", "cpu"]
    instruction = Path(data_dir) / "sft_train.json"  # the demo's games carry their SFT file
    if instruction.is_file():
        command += ["--sft_file", os.fspath(instruction)]
    return command


def run_together(runs: dict[str, tuple[list[str], dict[str, str]]]) -> dict[str, tuple[float, os.struct_rusage]]:
    """Start every ``name: (command, environment)`` at the same moment (from the repository root, output
    discarded); return each one's wall seconds and resource usage. Exits naming the run that failed."""
    started = time.perf_counter()
    procs = {name: subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, (command, env) in runs.items()}
    by_pid = {p.pid: name for name, p in procs.items()}
    results: dict[str, tuple[float, os.struct_rusage]] = {}
    while by_pid:
        pid, status, usage = os.wait4(-1, 0)
        name = by_pid.pop(pid, None)
        if name is None:
            continue
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{name}: {' '.join(runs[name][0])} exited with {os.waitstatus_to_exitcode(status)}")
        results[name] = (time.perf_counter() - started, usage)
    for name, (wall, usage) in results.items():
        print(f"{name}: {wall:.1f} s wall, {usage.ru_utime:.1f} s user, {usage.ru_stime:.1f} s system, "
              f"{usage.ru_minflt} minor faults, peak {usage.ru_maxrss / 1024:.0f} MiB")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", help="the model the default command evaluates (e.g. the demo's SFT model)")
    ap.add_argument("--data_dir", help="the games of the default command: a folder with json_2.1.1/valid_seen")
    ap.add_argument("--output_dir", default="runs/allocator_benchmark", help="the evaluations' outputs (replaced)")
    ap.add_argument("command", nargs="*", help="the command to run (after --) instead of the evaluation")
    args = ap.parse_args()
    command = args.command
    if not command:
        if not (args.model_dir and args.data_dir):
            ap.error("give --model_dir and --data_dir (or a command after --)")
        command = demo_evaluation(args.model_dir, args.data_dir)
    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | {"OMP_NUM_THREADS": "1",
                                                                              "MKL_NUM_THREADS": "1"}
    settings = {"glibc default": base | {"MALLOC_TUNING": "false"},
                "stage scripts": base | {"GLIBC_TUNABLES": tuned_value()}}
    results = run_together({name: ([part.replace("{output}", f"{args.output_dir}/{i}") for part in command], env)
                            for i, (name, env) in enumerate(settings.items())})
    print(f"ratio={results['glibc default'][0] / results['stage scripts'][0]:.2f}")


if __name__ == "__main__":
    main()
