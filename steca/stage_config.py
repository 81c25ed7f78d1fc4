"""The stage configuration: every stage's inputs, outputs and parameters, per environment, in one place.

Everything derives from two roots and a profile:

* ``data_root``: the layout ``python -m steca.data.download --output_dir DATA_ROOT`` writes
  (``<data_root>/alfworld/json_2.1.1/...``, ``<data_root>/virtualhome/...``,
  ``<data_root>/trajectories/<env>_sft.json``), or a generator's output laid out the same way;
* ``output_root``: where the run writes (``<output_root>/sft/<env>``, ``<output_root>/sampling/<env>``,
  ``<output_root>/data_collection``, ``<output_root>/<variant>/<env>``, ``<output_root>/eval/<env>``);
* ``profile``: ``cpu`` (a smoke-test scale: a bootstrapped nano model, 2 rollouts, episodes of 10
  steps in sampling and 20 in evaluation; the whole chain runs in minutes on a laptop, and
  ``run_demo.sh`` sets larger values) or ``gpu`` (the released Llama-2-7B-chat setting).

Each stage reads what the previous one writes: SFT's ``OUTPUT_DIR`` is sampling's ``MODEL_PATH``,
sampling's Monte Carlo files are stage 3's inputs, stage 3's merged file is the reinforced
training's ``TRAIN_DATA``, whose ``OUTPUT_DIR`` is the evaluation's ``MODEL_PATH``.

The bash stage scripts keep their editable variables at the top; a variable left empty takes its
value from here (``scripts/stage_defaults.sh`` runs ``python -m steca.stage_config --shell``).
A variable that is set overrides the configuration, and what derives from it follows (set
``OUT_DIR`` of sampling and the four step files move with it). To see every value::

    python -m steca.stage_config --env alfworld --profile cpu --data_root data --output_root outputs
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Mapping, Sequence

from eval_agent.types import MAX_STEPS

ENVIRONMENTS = ("alfworld", "virtualhome")
PROFILES = ("cpu", "gpu")
STAGES = ("data", "sft", "sampling", "collection", "train", "eval")

# The released sampling settings (the ``gpu`` profile; the sampling command line's defaults).
NUM_ROLLOUTS = 5
"""N, the Monte Carlo rollouts per step (paper Sec. 3.2: the step reward is their mean outcome)."""
MC_TEMPERATURE = 1.0
"""Sampling temperature of Monte Carlo rollouts."""
EXPLORE_TEMPERATURE = 0.0
"""Temperature of the base agent's own action and exploration from an expert prefix (greedy)."""
MAX_NEW_TOKENS = 512
"""Tokens per generated turn."""

# The authors' SFT file of each environment, under <data_root>/trajectories/.
_SFT_NAMES = {"alfworld": "alfworld_sft.json", "virtualhome": "virtualhome_sft.json"}


@dataclass(frozen=True)
class DataPaths:
    """Stage 0 (``steca.data.download``): what the authors' archives hold once unpacked."""

    env_data: str
    """The environment's data dir (ALFWorld: holds ``json_2.1.1/``; VirtualHome: scene graphs, resources, task files)."""
    sft_file: str
    """The expert trajectories (STeCa's SFT format)."""


@dataclass(frozen=True)
class SFTStage:
    """Stage 1, ``sft/my_sft.sh``: SFT warm-up of the base model on the expert trajectories."""

    sft_data: str
    model_size: str
    """cpu: size of the model ``steca.training.bootstrap`` builds at ``model_path`` when it is missing."""
    model_path: str
    output_dir: str
    lr: float
    epochs: int
    per_device_batch: int
    grad_accum: int
    max_length: int
    bf16: bool
    dtype: str
    use_lora: bool
    seed: int
    save_steps: int
    num_gpus: int
    accelerate_config: str


@dataclass(frozen=True)
class SamplingStage:
    """Stage 2, ``sampling/<env>/*.sh``: expert and explored step records and their Monte Carlo rewards."""

    env_data: str
    split: str
    task_file: str
    """VirtualHome: a task file overriding the split's (empty: the split's file in ``env_data``)."""
    sft_file: str
    model_path: str
    out_dir: str
    expert_steps: str
    expert_mc: str
    explore_steps: str
    explore_mc: str
    backend: str
    api_base: str
    part_num: int
    num_workers: int
    max_active: int
    max_new_tokens: int
    max_steps: int
    num_rollouts: int
    explore_temperature: float
    mc_temperature: float
    icl_num: int
    seed: int


@dataclass(frozen=True)
class CollectionStage:
    """Stage 3, ``data_collection/data_collection.sh``: D_s, D_c, D_e and the merged training file."""

    sft_file: str
    expert_mc: str
    explore_mc: str
    out_dir: str
    d_s: str
    d_c: str
    d_e: str
    train_data: str
    rule: str
    reflector: str
    reflection_model: str


@dataclass(frozen=True)
class TrainStage:
    """Stage 4, ``Reinfoced_train/steca_train.sh``: the reinforced objective (or a variant) from the SFT model."""

    variant: str
    train_data: str
    model_path: str
    output_dir: str
    beta: float
    lr: float
    epochs: int
    per_device_batch: int
    grad_accum: int
    bf16: bool
    dtype: str
    use_lora: bool
    seed: int
    save_steps: int
    max_length: int
    max_prompt_length: str
    max_target_length: str
    num_gpus: int
    accelerate_config: str


@dataclass(frozen=True)
class EvalStage:
    """Stage 5, ``eval/my_eval_alfworld.sh`` / ``eval/my_eval_vh.sh``."""

    agent_config: str
    model_path: str
    data_dir: str
    sft_file: str
    output_dir: str
    num_workers: int
    max_active: int
    icl_num: int
    max_steps: int
    max_new_tokens: int


@dataclass(frozen=True)
class StageConfig:
    """All stages of one environment for one run."""

    env: str
    profile: str
    data_root: str
    output_root: str
    data: DataPaths
    sft: SFTStage
    sampling: SamplingStage
    collection: CollectionStage
    train: TrainStage
    eval: EvalStage

    def stage(self, name: str) -> Any:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; expected one of {STAGES}")
        return getattr(self, name)


class _Overrides:
    """Values set by the user (shell variable names, upper case); each converted to the default's type."""

    def __init__(self, values: Mapping[str, str]):
        self.values = {k.upper(): v for k, v in values.items() if v not in (None, "")}

    def __call__(self, name: str, default: Any) -> Any:
        raw = self.values.get(name.upper())
        if raw is None:
            return default
        try:
            if isinstance(default, bool):
                if str(raw).lower() not in ("true", "false", "1", "0"):
                    raise ValueError("expected true or false")
                return str(raw).lower() in ("true", "1")
            return type(default)(raw)
        except ValueError as e:
            raise ValueError(f"variable {name.upper()}={raw!r}: {e}") from None


def _join(*parts: str) -> str:
    return str(PurePosixPath(*parts))


def stage_config(env: str, profile: str = "cpu", data_root: str = "data", output_root: str = "outputs",
                 overrides: Mapping[str, str] | None = None) -> StageConfig:
    """The configuration of ``env`` for ``profile`` under the two roots.

    ``overrides`` maps variable names (``MODEL_PATH``, ``OUT_DIR``...) to values, as the stage
    scripts set them; every value derived from an overridden one follows it. A name can mean a
    different thing in two stages (``OUTPUT_DIR``, ``MODEL_PATH``): pass overrides for one stage at
    a time (what :func:`shell_assignments` does).
    """
    if env not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {env!r}; expected one of {ENVIRONMENTS}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    o = _Overrides(overrides or {})
    gpu = profile == "gpu"
    data = DataPaths(env_data=o("ENV_DATA", _join(data_root, env)),
                     sft_file=o("SFT_FILE", _join(data_root, "trajectories", _SFT_NAMES[env])))

    model_size = o("MODEL_SIZE", "nano")
    sft = SFTStage(
        sft_data=o("SFT_DATA", data.sft_file), model_size=model_size,
        model_path=o("MODEL_PATH", "models/Llama-2-7b-chat-hf" if gpu else _join(output_root, f"bootstrap_{model_size}")),
        output_dir=o("OUTPUT_DIR", _join(output_root, "sft", env)),
        # released: lr 2e-5, 3 epochs, global batch 16 (4 GPUs x 2 x 2), cosine, max length 4096, bf16
        lr=o("LR", 2e-5 if gpu else 3e-3), epochs=o("EPOCHS", 3), per_device_batch=o("PER_DEVICE_BATCH", 2),
        grad_accum=o("GRAD_ACCUM", 2 if gpu else 1), max_length=o("MAX_LENGTH", 4096 if gpu else 2048),
        bf16=o("BF16", gpu), dtype=o("DTYPE", "float32" if gpu else "auto"), use_lora=o("USE_LORA", False),
        seed=o("SEED", 42), save_steps=o("SAVE_STEPS", 200), num_gpus=o("NUM_GPUS", 0),
        accelerate_config=o("ACCELERATE_CONFIG", "sft/configs/fsdp.yaml"))

    # sampling uses the evaluation prompt (released); a bootstrapped model never saw an in-context example
    icl_num = o("ICL_NUM", 1 if gpu else 0)
    out_dir = o("OUT_DIR", _join(output_root, "sampling", env))
    sampling = SamplingStage(
        env_data=data.env_data, split=o("SPLIT", "train"), task_file=o("TASK_FILE", ""), sft_file=data.sft_file,
        model_path=o("MODEL_PATH", _join(output_root, "sft", env)), out_dir=out_dir,
        expert_steps=o("EXPERT_STEPS", _join(out_dir, "expert_steps.jsonl")),
        expert_mc=o("EXPERT_MC", _join(out_dir, "expert_steps_mc.jsonl")),
        explore_steps=o("EXPLORE_STEPS", _join(out_dir, "explore_steps.jsonl")),
        explore_mc=o("EXPLORE_MC", _join(out_dir, "explore_steps_mc.jsonl")),
        backend=o("BACKEND", "vllm" if gpu else "hf"), api_base=o("API_BASE", ""), part_num=o("PART_NUM", 1),
        num_workers=o("NUM_WORKERS", 0), max_active=o("MAX_ACTIVE", 256),
        max_new_tokens=o("MAX_NEW_TOKENS", MAX_NEW_TOKENS if gpu else 32),
        max_steps=o("MAX_STEPS", MAX_STEPS if gpu else 10),
        num_rollouts=o("NUM_ROLLOUTS", NUM_ROLLOUTS if gpu else 2),
        explore_temperature=o("EXPLORE_TEMPERATURE", EXPLORE_TEMPERATURE),
        mc_temperature=o("MC_TEMPERATURE", MC_TEMPERATURE), icl_num=icl_num, seed=o("SEED", 0))

    cdir = o("OUT_DIR", _join(output_root, "data_collection"))
    collection = CollectionStage(
        sft_file=data.sft_file, expert_mc=o("EXPERT_MC", sampling.expert_mc), explore_mc=o("EXPLORE_MC", sampling.explore_mc),
        out_dir=cdir, d_s=o("D_S", _join(cdir, f"{env}_d_s.json")), d_c=o("D_C", _join(cdir, f"{env}_d_c.json")),
        d_e=o("D_E", _join(cdir, f"{env}_d_e.json")), train_data=o("TRAIN_DATA", _join(cdir, f"{env}_steca_pairs.json")),
        # released: every deviated step, reflections by GPT-4o; the cpu profile uses the offline stand-in
        rule=o("RULE", "released"), reflector=o("REFLECTOR", "openai" if gpu else "offline"),
        reflection_model=o("REFLECTION_MODEL", "gpt-4o"))

    variant = o("VARIANT", "steca")
    # the baselines' training files (data_collection/data_baselines.py) sit beside STeCa's merged file
    baseline_data = {"eto": _join(cdir, f"{env}_eto_pairs.json"), "ipr": _join(cdir, f"{env}_ipr.json")}
    train = TrainStage(
        variant=variant, train_data=o("TRAIN_DATA", baseline_data.get(variant, collection.train_data)),
        model_path=o("MODEL_PATH", sft.output_dir), output_dir=o("OUTPUT_DIR", _join(output_root, variant, env)),
        # released STeCa: 0; DPO, ETO and IPR: 0.1 (DPO's usual value; not checked against the ETO and IPR papers)
        beta=o("BETA", 0.1 if variant in ("dpo", "eto", "ipr") else 0.0),
        # released: lr 3e-6, 1 epoch, global batch 15 (5 GPUs x 1 x 3), constant with 10% warmup, bf16
        lr=o("LR", 3e-6 if gpu else 1e-4), epochs=o("EPOCHS", 1), per_device_batch=o("PER_DEVICE_BATCH", 1 if gpu else 2),
        grad_accum=o("GRAD_ACCUM", 3 if gpu else 1), bf16=o("BF16", gpu), dtype=o("DTYPE", "float32" if gpu else "auto"),
        use_lora=o("USE_LORA", False), seed=o("SEED", 42), save_steps=o("SAVE_STEPS", 200),
        # released: prompt + chosen kept whole, the concatenation cut on the right at MAX_LENGTH (a prompt
        # alone longer is reported and skipped); MAX_PROMPT_LENGTH / MAX_TARGET_LENGTH (empty: off) are
        # the non-released option that keeps the prompt's last N and the continuation's first M tokens
        max_length=o("MAX_LENGTH", 4096 if gpu else 2048),
        max_prompt_length=o("MAX_PROMPT_LENGTH", ""), max_target_length=o("MAX_TARGET_LENGTH", ""),
        num_gpus=o("NUM_GPUS", 0), accelerate_config=o("ACCELERATE_CONFIG", "sft/configs/fsdp.yaml"))

    eval_model = o("MODEL_PATH", _join(output_root, "steca", env))
    model_name = PurePosixPath(eval_model).name
    if model_name == env:  # <output_root>/<variant>/<env>: name the run by the variant
        model_name = PurePosixPath(eval_model).parent.name or model_name
    evaluation = EvalStage(
        agent_config=o("AGENT_CONFIG", "vllm" if gpu else "hf"), model_path=eval_model, data_dir=o("DATA_DIR", data.env_data),
        sft_file=data.sft_file, output_dir=o("OUTPUT_DIR", _join(output_root, "eval", env, model_name)),
        num_workers=o("NUM_WORKERS", 2 if gpu else 0), max_active=o("MAX_ACTIVE", 64),
        icl_num=icl_num, max_steps=o("MAX_STEPS", MAX_STEPS if gpu else 20),
        max_new_tokens=o("MAX_NEW_TOKENS", MAX_NEW_TOKENS if gpu else 64))
    return StageConfig(env, profile, data_root, output_root, data, sft, sampling, collection, train, evaluation)


def _shell_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def stage_variables(cfg: StageConfig, stage: str) -> dict[str, str]:
    """The stage's variables as the scripts name them (upper case) with their string values."""
    part = cfg.stage(stage)
    out = {"ENV_NAME": cfg.env, "PROFILE": cfg.profile, "DATA_ROOT": cfg.data_root, "OUTPUT_ROOT": cfg.output_root}
    out.update({f.name.upper(): _shell_value(getattr(part, f.name)) for f in dataclasses.fields(part)})
    return out


def shell_assignments(env: str, stage: str, profile: str = "cpu", data_root: str = "data",
                      output_root: str = "outputs", overrides: Mapping[str, str] | None = None) -> str:
    """Bash assignments (``NAME='value'``, one a line) of every variable of ``stage``, overrides applied."""
    cfg = stage_config(env, profile, data_root, output_root, overrides)
    return "\n".join(f"{k}={shlex.quote(v)}" for k, v in stage_variables(cfg, stage).items())


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", required=True, choices=ENVIRONMENTS)
    p.add_argument("--profile", default="cpu", choices=PROFILES)
    p.add_argument("--data_root", default="data")
    p.add_argument("--output_root", default="outputs")
    p.add_argument("--stage", choices=STAGES, default=None, help="one stage (default: all, as JSON)")
    p.add_argument("--shell", action="store_true", help="print bash assignments of --stage's variables")
    p.add_argument("overrides", nargs="*", metavar="NAME=VALUE", help="variables set by the stage script")
    args = p.parse_args(argv)
    overrides = dict(kv.split("=", 1) for kv in args.overrides if "=" in kv)
    if args.shell:
        if args.stage is None:
            p.error("--shell needs --stage")
        print(shell_assignments(args.env, args.stage, args.profile, args.data_root, args.output_root, overrides))
        return
    cfg = stage_config(args.env, args.profile, args.data_root, args.output_root, overrides)
    shown = {s: stage_variables(cfg, s) for s in ([args.stage] if args.stage else STAGES)}
    print(json.dumps(shown, indent=1))


if __name__ == "__main__":
    main()
