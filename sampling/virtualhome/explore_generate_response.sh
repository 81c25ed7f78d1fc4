#!/usr/bin/env bash
# Explored steps: from every expert prefix, the SFT agent's own action and its greedy exploration to
# the end. Reads SFT_FILE and MODEL_PATH, writes EXPLORE_STEPS.
# Every sampling variable can be set from the environment (paths relative to the repository root);
# `python -m steca.stage_config --env virtualhome --stage sampling` lists them with their values, e.g.
#   DATA_ROOT=data OUTPUT_ROOT=outputs PROFILE=gpu PART_NUM=4 bash sampling/virtualhome/explore_generate_response.sh
# A task file without a training split: ENV_DATA=D TASK_FILE=D/vh_seen_test.jsonl SFT_FILE=vh_sft.json
# (SFT file: python -m steca.generators.virtualhome_tasks --sft_from ...).
MODEL_PATH=${MODEL_PATH:-}            # the SFT agent (empty: SFT's OUTPUT_DIR)
EXPLORE_TEMPERATURE=${EXPLORE_TEMPERATURE:-}  # (empty: 0, greedy)
source "$(dirname "$0")/../common.sh"
sampling_stage virtualhome explore_steps
