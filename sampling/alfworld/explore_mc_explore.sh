#!/usr/bin/env bash
# Monte Carlo step rewards of the explored steps: NUM_ROLLOUTS rollouts at MC_TEMPERATURE from the
# state after the explored action. Reads EXPLORE_STEPS and MODEL_PATH, writes EXPLORE_MC.
# Every sampling variable can be set from the environment (paths relative to the repository root);
# `python -m steca.stage_config --env alfworld --stage sampling` lists them with their values, e.g.
#   DATA_ROOT=data OUTPUT_ROOT=outputs PROFILE=gpu PART_NUM=4 bash sampling/alfworld/explore_mc_explore.sh
NUM_ROLLOUTS=${NUM_ROLLOUTS:-}        # N rollouts per state (empty: cpu 2, gpu 5 as released)
BACKEND=${BACKEND:-}                  # hf | vllm | openai (empty: cpu hf, gpu vllm)
source "$(dirname "$0")/../common.sh"
sampling_stage alfworld explore_mc
