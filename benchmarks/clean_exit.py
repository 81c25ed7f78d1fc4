"""How often a two-process gloo run aborts at exit, with and without closing its process group first.

Each launch is ``torchrun --standalone --nproc_per_node 2`` of this file in worker mode: both ranks join a
gloo group, all-reduce a tensor twenty times, rank 0 lingers 50 ms (as it does while it saves the model),
and then either both exit as they are (``plain``), or both call
:func:`steca.training.trainer_setup.close_process_group` first (``close``, what every trainer's ``main``
does). The launches alternate between the two modes, so both see the machine's load alike; the script
prints the failed launches per mode, then ``ratio=<plain failures + 1> / <close failures + 1>``.

    python benchmarks/clean_exit.py --runs 60

A rank that exits with its group open tears gloo down in no set order; on 2 cores about a third of the
``plain`` launches ended with ``terminate called without an active exception`` (SIGABRT) in one rank.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("plain", "close")


def worker(mode: str) -> None:
    """One rank: join the group, all-reduce, then exit with the group open (plain) or closed (close)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.ones(1000)
    for _ in range(20):
        dist.all_reduce(t)
    if dist.get_rank() == 0:
        time.sleep(0.05)
    if mode == "close":
        from steca.training.trainer_setup import close_process_group

        close_process_group()


def launch(mode: str) -> tuple[bool, str]:
    """One torchrun launch of two ranks; (succeeded, the end of its output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["torchrun", "--standalone", "--nproc_per_node", "2", __file__, "--worker", mode],
                          env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode == 0, (proc.stdout + proc.stderr)[-400:]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=60, help="launches per mode")
    p.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    failed = {m: 0 for m in MODES}
    aborts = {m: 0 for m in MODES}
    for i in range(args.runs):
        for mode in MODES:
            ok, tail = launch(mode)
            failed[mode] += not ok
            aborts[mode] += "terminate called" in tail or "SIGABRT" in tail
        print(f"\r{i + 1}/{args.runs} launches per mode", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    for mode in MODES:
        print(f"{mode}: {failed[mode]} of {args.runs} launches failed ({aborts[mode]} with an abort)")
    print(f"ratio={(failed['plain'] + 1) / (failed['close'] + 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
