#!/usr/bin/env bash
# Explored steps: from every expert prefix, the SFT agent's own action and its greedy exploration to
# the end. Reads SFT_FILE and MODEL_PATH, writes EXPLORE_STEPS.
# Every sampling variable can be set from the environment (paths relative to the repository root);
# `python -m steca.stage_config --env alfworld --stage sampling` lists them with their values, e.g.
#   DATA_ROOT=data OUTPUT_ROOT=outputs PROFILE=gpu PART_NUM=4 bash sampling/alfworld/explore_generate_response.sh
MODEL_PATH=${MODEL_PATH:-}            # the SFT agent (empty: SFT's OUTPUT_DIR)
EXPLORE_TEMPERATURE=${EXPLORE_TEMPERATURE:-}  # (empty: 0, greedy)
source "$(dirname "$0")/../common.sh"
sampling_stage alfworld explore_steps
