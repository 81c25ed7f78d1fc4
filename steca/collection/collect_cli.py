"""Stage 3 on files: read step records and expert trajectories, build D_s / D_c / D_e, merge, summarise.

The ``data_collection/*.py`` scripts are thin wrappers over :func:`main`. Each run writes, next to
its output file ``<out>.json``: ``<out>_summary.json`` (counts per set and per rule, turned-away
candidates per condition, problems), ``<out>_problems.jsonl`` (every record that could not be
built, e.g. a reflection that finally failed) and PNG histograms of step rewards and distances.
"""
from __future__ import annotations

import argparse
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from eval_agent.storage import check_not_input, write_json_atomic
from steca.method.datasets import BuildResult, ContinuationOptions, build_calibrated, build_expert, build_explored
from steca.method.deviation import RULE_PRESETS, DeviationConfig
from steca.method.encoders import ENCODER_THRESHOLDS, ENCODERS, EncoderThresholds, make_encoder
from steca.method.reflection import OfflineReflector, PolicyReflector, ReflectionCache, Reflector
from steca.method.rewards import WEIGHT_SCHEMES, WeightScheme
from steca.records import (PairRecord, RecordError, SFTRecord, StepRecord, load_pairs, load_sft, load_steps, log_summary,
                           nonempty, write_records)

logger = logging.getLogger(__name__)

DEFAULT_WEIGHTS = {"alfworld": "alfworld", "virtualhome": "virtualhome"}


# ---------------------------------------------------------------- outputs
def side_path(output: Path, suffix: str) -> Path:
    """``<dir>/<stem><suffix>`` next to ``output``."""
    return output.with_name(output.stem + suffix)


def plot_histograms(output: Path, step_rewards: dict[str, list[float]], distances: dict[str, list[float]]) -> list[Path]:
    """Write ``<out>_step_rewards.png`` and ``<out>_distances.png`` (matplotlib, Agg); returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for suffix, data, xlabel in (("_step_rewards.png", step_rewards, "Monte Carlo step reward"),
                                 ("_distances.png", distances, "DTW deviation distance d")):
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = False
        for label, values in data.items():
            if values:
                lo, hi = min(values), max(values)
                # numpy cannot cut a (near-)zero range into 20 bins: draw one bin around the value
                bins, span = (20, None) if hi - lo > 1e-6 * max(1.0, abs(hi)) else (1, (lo - 0.5, hi + 0.5))
                ax.hist(values, bins=bins, range=span, alpha=0.6, label=f"{label} (n={len(values)})")
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.legend()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        ax.set_title(output.stem)
        fig.tight_layout()
        path = side_path(output, suffix)
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def write_run(output: Path, set_name: str, result: BuildResult, step_rewards: dict[str, list[float]],
              settings: dict, invalid: list[str]) -> dict:
    """Write the pairs, the problems, the summary and the histograms of one builder run."""
    write_records(output, result.pairs)
    problems_path = side_path(output, "_problems.jsonl")
    write_records(problems_path, result.problems, fmt="jsonl")
    plot_histograms(output, step_rewards, {set_name: result.distances})
    rules = Counter(str(p.extra.get("rule")) for p in result.pairs)
    summary = {"output": str(output), "set": set_name, "pairs": len(result.pairs),
               "per_rule": dict(rules), "turned_away": dict(result.rejected),
               "counts": dict(result.counts), "problems": len(result.problems),
               "problems_file": str(problems_path), "invalid_input_records": invalid, "settings": settings}
    write_json_atomic(side_path(output, "_summary.json"), summary)
    logger.info("%s: %d %s pairs (%s); %d problems", output, len(result.pairs), set_name, dict(rules),
                len(result.problems))
    return summary


def merge_training_files(inputs: Sequence[str | Path], output: str | Path, skip_invalid: bool = False) -> dict:
    """Concatenate training files into one (``id, prompt, chosen, rejected, reward`` + extras).

    Every input is validated; a bad record is reported and skipped, a duplicate id keeps the
    first occurrence. Inputs that hold no pair at all between them are an error. Writes ``<out>_summary.json`` (counts per set and rule) and histograms.
    """
    out = Path(output)
    pairs: list[PairRecord] = []
    seen: set[str] = set()
    errors, duplicates = [], 0
    for path in inputs:
        loaded = load_pairs(path, skip_invalid=skip_invalid)
        errors.extend(str(e) for e in loaded.errors)
        for p in loaded.records:
            if p.id in seen:
                duplicates += 1
                continue
            seen.add(p.id)
            pairs.append(p)
    if not pairs:
        raise RecordError(", ".join(str(p) for p in inputs), None, None, "no training pair in any input: nothing to merge")
    write_records(out, pairs)
    by_set: dict[str, list[float]] = {}
    for p in pairs:
        if isinstance(p.extra.get("distance"), (int, float)):
            by_set.setdefault(str(p.extra.get("set", "unknown")), []).append(float(p.extra["distance"]))
    plot_histograms(out, {}, by_set)
    summary = {"output": str(out), "pairs": len(pairs), "inputs": [str(p) for p in inputs],
               "per_set": dict(Counter(str(p.extra.get("set", "unknown")) for p in pairs)),
               "per_rule": dict(Counter(f"{p.extra.get('set', 'unknown')}: {p.extra.get('rule')}" for p in pairs)),
               "duplicates_skipped": duplicates, "invalid_records": errors}
    write_json_atomic(side_path(out, "_summary.json"), summary)
    logger.info("merged %d pairs into %s (%s)", len(pairs), out, summary["per_set"])
    return summary


# ---------------------------------------------------------------- inputs
def load_inputs(sft_path: str, steps_paths: Sequence[str], invalid: list[str], required: str | None = None,
                skip_invalid: bool = False) -> tuple[dict[str, SFTRecord], list[list[StepRecord]]]:
    """Read the SFT file and step files; every invalid record's error (file, record, field) goes to ``invalid``.

    ``required`` names a reward every step record must hold (``mc_step_reward``, file field
    ``monte_carlo_step_reward``: the Monte Carlo stage's output). A record without it is an error
    naming the field, or with ``skip_invalid`` it is dropped and counted. A file with no usable
    record is an error.
    """
    sft = load_sft(sft_path, skip_invalid=skip_invalid)
    invalid.extend(str(e) for e in sft.errors)
    sft_by_id = {r.id: r for r in nonempty(sft, sft_path, "SFT record")}
    steps = []
    for p in steps_paths:
        loaded = load_steps(p, skip_invalid=skip_invalid)
        invalid.extend(str(e) for e in loaded.errors)
        records = nonempty(loaded, p, "step record")
        if required is not None:
            field_name = {"mc_step_reward": "monte_carlo_step_reward"}.get(required, required)
            missing = [RecordError(p, i, field_name, "missing or null: run the Monte Carlo stage (mc) on this file "
                                   "first", r.id) for i, r in enumerate(records) if getattr(r, required) is None]
            if missing and not skip_invalid:
                raise RecordError(missing[0].path, missing[0].index, field_name, missing[0].problem
                                  + f" ({len(missing)} of {len(records)} record(s); --skip_invalid drops them)",
                                  missing[0].record_id)
            log_summary(str(p), missing, len(records))
            invalid.extend(str(e) for e in missing)
            records = [r for r in records if getattr(r, required) is not None]
            if not records:
                raise RecordError(p, None, field_name, "no record holds this field")
        steps.append(records)
    return sft_by_id, steps


def make_reflector(args: argparse.Namespace) -> Reflector:
    """The reflector the command line asks for: ``offline`` (needs nothing), ``openai`` (GPT-4o or any
    served model), ``hf`` (a local model dir) or ``base`` (the base agent's model dir through ``hf``)."""
    if args.reflector == "offline":
        logger.warning("reflections come from the OFFLINE STAND-IN template, not from an LLM")
        return OfflineReflector()
    from eval_agent.agents.policy import SamplingParams
    from steca.sampling.policies import build_policy

    # ``base``: the base agent's own model dir through ``hf`` (the paper's self-reflection variant)
    policy = build_policy("hf" if args.reflector == "base" else args.reflector, args.reflection_model, args.api_base)
    cache = ReflectionCache(args.reflection_cache) if args.reflection_cache else None
    params = SamplingParams(temperature=args.reflection_temperature, max_new_tokens=args.reflection_max_tokens)
    return PolicyReflector(policy, f"{args.reflector}:{args.reflection_model}", params, cache, args.reflection_batch)


def deviation_config(args: argparse.Namespace, thresholds: EncoderThresholds | None = None) -> DeviationConfig:
    """The rule preset with the command line's overrides; a preset's similarity filter takes the
    encoder's own threshold (``thresholds``) unless ``--max_similarity`` is given."""
    cfg = RULE_PRESETS[args.rule]
    overrides = {}
    if thresholds is not None and cfg.max_similarity is not None:
        overrides["max_similarity"] = thresholds.max_similarity
    if args.delta is not None:
        overrides["delta"] = args.delta
    if args.min_step is not None:
        overrides["min_step"] = args.min_step
    if args.max_similarity is not None:
        overrides["max_similarity"] = None if args.max_similarity < 0 else args.max_similarity
    if args.require_exploration_failed is not None:
        overrides["require_exploration_failed"] = args.require_exploration_failed
    if args.require_action_differs is not None:
        overrides["require_action_differs"] = args.require_action_differs
    if args.first_only is not None:
        overrides["first_only"] = args.first_only
    return replace(cfg, **overrides)


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def build_parser(stage: str, env_name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=f"STeCa {stage} set for {env_name}")
    p.add_argument("--sft", required=stage != "merge", help="expert trajectories (SFT file)")
    p.add_argument("--output", required=True, help="training file to write (.json or .jsonl)")
    p.add_argument("--weights", choices=sorted(WEIGHT_SCHEMES), default=DEFAULT_WEIGHTS.get(env_name, "alfworld"))
    p.add_argument("--encoder", default="auto", choices=["auto", *ENCODERS],
                   help="action encoder (auto: bert-cls with --encoder_model, else MiniLM when installed, else hashing); "
                        "each has its own thresholds (README, 'Action encoders')")
    p.add_argument("--encoder_model", default=None,
                   help="local bert-base-uncased dir for the released [CLS] encoder (bert-cls)")
    if stage in ("calibrated", "expert"):
        p.add_argument("--expert_steps", required=True, help="expert step records with MC rewards")
    if stage in ("calibrated", "expert", "explored"):
        p.add_argument("--explore_steps", required=True, help="explored step records with MC rewards")
    if stage == "expert":
        p.add_argument("--margin", type=float, default=0.01)
        p.add_argument("--include_whole", type=_bool, default=True)
        p.add_argument("--min_step", type=int, default=2,
                       help="step rule only from this iteration on (released: 2, iterations 0 and 1 skipped)")
    if stage == "calibrated":
        p.add_argument("--rule", choices=sorted(RULE_PRESETS), default="released")
        p.add_argument("--delta", type=float, default=None)
        p.add_argument("--min_step", type=int, default=None)
        p.add_argument("--max_similarity", type=float, default=None, help="negative: no similarity filter")
        p.add_argument("--require_exploration_failed", type=_bool, default=None)
        p.add_argument("--require_action_differs", type=_bool, default=None)
        p.add_argument("--first_only", type=_bool, default=None)
        p.add_argument("--reflector", choices=["offline", "openai", "hf", "base"], default="offline")
        p.add_argument("--reflection_model", default="gpt-4o")
        p.add_argument("--api_base", default=None)
        p.add_argument("--reflection_cache", default=None, help="JSONL cache of replies (default: <out>_reflections.jsonl)")
        p.add_argument("--reflection_temperature", type=float, default=0.0)
        p.add_argument("--reflection_max_tokens", type=int, default=256)
        p.add_argument("--reflection_batch", type=int, default=8)
        p.add_argument("--replay_check", type=_bool, default=False,
                       help="replay every calibrated trajectory in the environment and flag it")
        p.add_argument("--env_data", default=None, help="environment data root for --replay_check")
        p.add_argument("--env_split", default="train")
        p.add_argument("--env_task_file", default=None,
                       help="VirtualHome: task file for --replay_check overriding the split's")
        p.add_argument("--drop_non_executable", type=_bool, default=False,
                       help="with --replay_check: drop calibrations whose expert suffix the engine rejects")
    if stage == "merge":
        p.add_argument("inputs", nargs="+", help="training files to merge")
    p.add_argument("--skip_invalid", action="store_true",
                   help="drop input records with a reward out of range, not finite or missing (counted) instead of "
                        "stopping")
    if stage != "merge":
        p.add_argument("--keep_final_observation", type=_bool, default=False,
                       help="keep an exploration's final observation (released: dropped)")
    if stage == "calibrated":
        p.add_argument("--keep_empty_rejected", type=_bool, default=False,
                       help="keep a calibrated pair whose rejected side has no action, with d = 0 (released: dropped)")
    p.add_argument("--log_level", default="INFO")
    return p


def continuation_options(args: argparse.Namespace) -> ContinuationOptions:
    return ContinuationOptions(args.keep_final_observation, getattr(args, "keep_empty_rejected", False))


def main(stage: str, env_name: str, argv: Sequence[str] | None = None) -> dict:
    """Entry point of ``data_collection/*.py``: ``stage`` is calibrated / explored / expert / merge."""
    args = build_parser(stage, env_name).parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    output = Path(args.output)
    inputs_given = [getattr(args, name, None) for name in ("sft", "expert_steps", "explore_steps")]
    inputs_given += list(getattr(args, "inputs", None) or [])
    for out in (output, side_path(output, "_problems.jsonl"), side_path(output, "_summary.json")):
        check_not_input(out, inputs_given)
    if stage == "merge":
        return merge_training_files(args.inputs, output, args.skip_invalid)
    weights: WeightScheme = WEIGHT_SCHEMES[args.weights]
    encoder = make_encoder(args.encoder, args.encoder_model)
    thresholds = ENCODER_THRESHOLDS[encoder.name]
    if weights.name == "alfworld":  # D_e's distance threshold is in the encoder's units (VirtualHome: identical only)
        weights = replace(weights, explored_max_distance=thresholds.explored_max_distance)
    settings = {"env": env_name, "weights": weights.name, "encoder": encoder.name,
                "explored_max_distance": weights.explored_max_distance}
    invalid: list[str] = []
    if stage == "explored":
        sft, (explored,) = load_inputs(args.sft, [args.explore_steps], invalid, "agent_final_reward",
                                       args.skip_invalid)
        result = build_explored(sft, explored, encoder, weights, continuation_options(args))
        rewards = {"explored t=0": [r.mc_step_reward for r in explored if r.iteration == 0 and r.mc_step_reward is not None]}
        return write_run(output, "explored", result, rewards, settings, invalid)
    sft, (expert, explored) = load_inputs(args.sft, [args.expert_steps, args.explore_steps], invalid,
                                          "mc_step_reward", args.skip_invalid)
    rewards = {"expert": [r.mc_step_reward for r in expert if r.mc_step_reward is not None],
               "explored": [r.mc_step_reward for r in explored if r.mc_step_reward is not None]}
    if stage == "expert":
        result = build_expert(sft, expert, explored, encoder, weights, args.margin, args.include_whole, args.min_step,
                              continuation_options(args))
        settings.update(margin=args.margin, include_whole=args.include_whole, min_step=args.min_step)
        return write_run(output, "expert", result, rewards, settings, invalid)
    if stage != "calibrated":
        raise ValueError(f"unknown stage {stage!r}")
    cfg = deviation_config(args, thresholds)
    if args.reflector != "offline" and args.reflection_cache is None:
        args.reflection_cache = str(side_path(output, "_reflections.jsonl"))
    reflector = make_reflector(args)
    try:
        result = build_calibrated(sft, expert, explored, cfg, encoder, reflector, weights, continuation_options(args))
    finally:
        reflector.close()
    settings.update(rule=cfg.rule_name(), reflector=reflector.source,
                    reflection_stand_in=isinstance(reflector, OfflineReflector))
    if args.replay_check:
        from eval_agent.envs import make_env
        from steca.sampling.replay import check_calibrated_pairs

        env = make_env(env_name, args.env_split, args.env_data, task_file=args.env_task_file)
        try:
            result.pairs, replay = check_calibrated_pairs(env, result.pairs, sft, args.drop_non_executable)
        finally:
            env.close()
        settings["replay"] = replay.as_dict()
        settings["drop_non_executable"] = args.drop_non_executable
    return write_run(output, "calibrated", result, rewards, settings, invalid)
