"""Training files of the paper's baselines from the STeCa sampling outputs (any environment).

    python data_collection/data_baselines.py rft --sft SFT --explore_steps EXPLORE_MC --output rft_sft.json
    python data_collection/data_baselines.py eto --sft SFT --explore_steps EXPLORE_MC --output eto_pairs.json
    python data_collection/data_baselines.py ipr --sft SFT --expert_steps EXPERT_MC --explore_steps EXPLORE_MC \\
        --output ipr.json

RFT writes SFT records (train with ``sft/my_sft.sh``), ETO pair records (``VARIANT=eto`` of
``Reinfoced_train/steca_train.sh``), IPR pair records with a ``level`` field (``VARIANT=ipr``). Next to
the output: ``<out>_summary.json`` (counts, turned-away candidates per reason, settings) and
``<out>_problems.jsonl``. The rules are in :mod:`steca.method.baselines`.
"""
import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone without installing

from steca.method.baselines import IPRConfig, build_eto, build_ipr, build_rft  # noqa: E402
from steca.records import load_sft, load_steps, write_records  # noqa: E402


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return s.lower() in ("1", "true", "yes", "on")
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="RFT / ETO / IPR training files from expert trajectories and step records")
    p.add_argument("method", choices=["rft", "eto", "ipr"])
    p.add_argument("--sft", required=True, help="expert trajectories (SFT file) of the sampled tasks")
    p.add_argument("--explore_steps", required=True, help="explored step records with MC rewards and outcomes")
    p.add_argument("--expert_steps", help="expert step records with MC rewards (ipr)")
    p.add_argument("--output", required=True, help="training file to write (.json or .jsonl)")
    p.add_argument("--from_start_only", type=_bool, default=True,
                   help="rft: keep only successful explorations from the task's start (t = 0)")
    p.add_argument("--dedupe", type=_bool, default=True, help="rft: drop repeated trajectories of a task")
    p.add_argument("--margin", type=float, default=0.0, help="ipr: step pair when r_expert(t) - r_explore(t) > margin")
    p.add_argument("--min_step", type=int, default=1, help="ipr: first step index given step pairs")
    for part in ("outcome", "step", "sft"):
        p.add_argument(f"--{part}_level", type=_bool, default=True, help=f"ipr: build the {part} part")
    p.add_argument("--log_level", default="INFO")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sft_loaded = load_sft(args.sft)
    explore = load_steps(args.explore_steps)
    invalid = [str(e) for e in sft_loaded.errors + explore.errors]
    sft = {r.id: r for r in sft_loaded.records}
    settings: dict = {"method": args.method, "sft": args.sft, "explore_steps": args.explore_steps}
    if args.method == "rft":
        result = build_rft(sft, explore.records, args.from_start_only, args.dedupe)
        settings.update(from_start_only=args.from_start_only, dedupe=args.dedupe)
    elif args.method == "eto":
        result = build_eto(sft, explore.records)
    else:
        if not args.expert_steps:
            raise SystemExit("ipr needs --expert_steps (expert step records with Monte Carlo rewards)")
        expert = load_steps(args.expert_steps)
        invalid += [str(e) for e in expert.errors]
        cfg = IPRConfig(args.margin, args.min_step, args.outcome_level, args.step_level, args.sft_level)
        result = build_ipr(sft, expert.records, explore.records, cfg)
        settings.update(expert_steps=args.expert_steps, **asdict(cfg))
    output = Path(args.output)
    write_records(output, result.records)
    write_records(output.with_name(output.stem + "_problems.jsonl"), result.problems, fmt="jsonl")
    summary = {"output": str(output), **result.summary(), "invalid_input_records": invalid, "settings": settings}
    output.with_name(output.stem + "_summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    logging.getLogger("data_baselines").info("%s: %d %s records %s", output, len(result.records), args.method,
                                             dict(result.counts))
    return summary


if __name__ == "__main__":
    main()
