#!/usr/bin/env bash
# Monte Carlo step rewards of the explored steps: NUM_ROLLOUTS rollouts at MC_TEMPERATURE from the
# state after the explored action. Reads EXPLORE_STEPS and MODEL_PATH, writes EXPLORE_MC.
# Every sampling variable can be set from the environment (paths relative to the repository root);
# `python -m steca.stage_config --env virtualhome --stage sampling` lists them with their values, e.g.
#   DATA_ROOT=data OUTPUT_ROOT=outputs PROFILE=gpu PART_NUM=4 bash sampling/virtualhome/explore_mc_explore.sh
# A task file without a training split: ENV_DATA=D TASK_FILE=D/vh_seen_test.jsonl SFT_FILE=vh_sft.json
# (SFT file: python -m steca.generators.virtualhome_tasks --sft_from ...).
NUM_ROLLOUTS=${NUM_ROLLOUTS:-}        # N rollouts per state (empty: cpu 2, gpu 5 as released)
BACKEND=${BACKEND:-}                  # hf | vllm | openai (empty: cpu hf, gpu vllm)
source "$(dirname "$0")/../common.sh"
sampling_stage virtualhome explore_mc
