#!/usr/bin/env bash
# Monte Carlo step rewards of the expert steps: NUM_ROLLOUTS rollouts at MC_TEMPERATURE from each
# state. Reads EXPERT_STEPS and MODEL_PATH (the SFT agent), writes EXPERT_MC.
# Every sampling variable can be set from the environment (paths relative to the repository root);
# `python -m steca.stage_config --env virtualhome --stage sampling` lists them with their values, e.g.
#   DATA_ROOT=data OUTPUT_ROOT=outputs PROFILE=gpu PART_NUM=4 bash sampling/virtualhome/expert_mc_explore.sh
# A task file without a training split: ENV_DATA=D TASK_FILE=D/vh_seen_test.jsonl SFT_FILE=vh_sft.json
# (SFT file: python -m steca.generators.virtualhome_tasks --sft_from ...).
NUM_ROLLOUTS=${NUM_ROLLOUTS:-}        # N rollouts per state (empty: cpu 2, gpu 5 as released)
MC_TEMPERATURE=${MC_TEMPERATURE:-}    # (empty: 1.0)
source "$(dirname "$0")/../common.sh"
sampling_stage virtualhome expert_mc
