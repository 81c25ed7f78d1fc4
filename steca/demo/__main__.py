"""``python -m steca.demo <command>``: the helpers ``run_demo.sh`` calls.

    stage     --run_dir R --name N [--log F] -- CMD ...   run CMD unless stage N of R is done; mark it done
              after (with --log, CMD's output goes to F, not the console)
    is-done   --run_dir R --name N              exit 0 when stage N is done, 1 otherwise
    subset    --sft F --n K --seed S --output O the K trajectories Monte Carlo scores
    steps     --pairs F --batch_size B [--epochs E]   optimizer steps of the reinforced stage
    report    --run_dir R [--assets_dir A]      print the table, write results.md and the plots
    seeds     --output O [--assets_dir A] RUN_DIR ...   means over seeds with intervals and paired tests
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from steca.demo.prep import take_subset, training_steps
from steca.demo.report import write_report, write_seed_report
from steca.demo.stage_markers import failure_excerpt, is_done, run_stage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m steca.demo", description="helpers of run_demo.sh")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stage", help="run a command once; a completion marker makes reruns skip it")
    s.add_argument("--run_dir", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--log", default=None, help="append the command's output here, not to the console")
    s.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command")
    d = sub.add_parser("is-done", help="exit status 0 when the stage is done")
    d.add_argument("--run_dir", required=True)
    d.add_argument("--name", required=True)
    u = sub.add_parser("subset", help="draw the trajectories that Monte Carlo scores")
    u.add_argument("--sft", required=True)
    u.add_argument("--n", type=int, required=True, help="<= 0: all")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--output", required=True)
    t = sub.add_parser("steps", help="print ceil(pairs / batch_size) * epochs")
    t.add_argument("--pairs", required=True)
    t.add_argument("--batch_size", type=int, required=True)
    t.add_argument("--epochs", type=int, default=1)
    r = sub.add_parser("report", help="print the table; write results.md and plots")
    r.add_argument("--run_dir", required=True)
    r.add_argument("--assets_dir", default=None, help="also copy the plots here")
    m = sub.add_parser("seeds", help="means over several run folders (seeds), intervals, pooled paired tests")
    m.add_argument("--output", required=True, help="markdown file to write (a PNG goes next to it)")
    m.add_argument("--assets_dir", default=None, help="also copy the plot here as demo_seeds.png")
    m.add_argument("run_dirs", nargs="+")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "stage":
        cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
        if not cmd:
            raise SystemExit("stage needs a command after --")
        # the log is appended to: show only what this run wrote
        start = Path(args.log).stat().st_size if args.log and Path(args.log).is_file() else 0
        try:
            run_stage(args.run_dir, args.name, cmd, log=args.log)
        except subprocess.CalledProcessError as e:
            tail = ""
            if args.log and Path(args.log).is_file():
                with open(args.log, "rb") as f:
                    f.seek(start)
                    tail = "; the end of its log:\n" + failure_excerpt(f.read().decode("utf-8", errors="replace"))
            logging.getLogger(__name__).error("stage %s failed with exit status %d; rerun to resume it%s",
                                              args.name, e.returncode, tail)
            return e.returncode or 1
        return 0
    if args.command == "is-done":
        return 0 if is_done(args.run_dir, args.name) else 1
    if args.command == "subset":
        n = take_subset(args.sft, args.n, args.seed, args.output)
        logging.getLogger(__name__).info("wrote %d trajectories to %s", n, args.output)
        return 0
    if args.command == "steps":
        print(training_steps(args.pairs, args.batch_size, args.epochs))
        return 0
    if args.command == "report":
        sys.stdout.write(write_report(args.run_dir, args.assets_dir) + "\n")
        return 0
    if args.command == "seeds":
        sys.stdout.write(write_seed_report(args.run_dirs, args.output, args.assets_dir) + "\n")
        return 0
    raise SystemExit(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
