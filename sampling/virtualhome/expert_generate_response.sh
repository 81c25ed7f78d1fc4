#!/usr/bin/env bash
# Expert steps: for every expert trajectory and step t, the expert prefix plus the expert action t
# (no model). Reads SFT_FILE, writes EXPERT_STEPS.
# Every sampling variable can be set from the environment (paths relative to the repository root);
# `python -m steca.stage_config --env virtualhome --stage sampling` lists them with their values, e.g.
#   DATA_ROOT=data OUTPUT_ROOT=outputs PROFILE=gpu PART_NUM=4 bash sampling/virtualhome/expert_generate_response.sh
# A task file without a training split: ENV_DATA=D TASK_FILE=D/vh_seen_test.jsonl SFT_FILE=vh_sft.json
# (SFT file: python -m steca.generators.virtualhome_tasks --sft_from ...).
source "$(dirname "$0")/../common.sh"
sampling_stage virtualhome expert_steps
