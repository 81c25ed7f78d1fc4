#!/usr/bin/env bash
# Expert steps: for every expert trajectory and step t, the expert prefix plus the expert action t
# (no model). Reads SFT_FILE, writes EXPERT_STEPS.
# Every sampling variable can be set from the environment (paths relative to the repository root);
# `python -m steca.stage_config --env alfworld --stage sampling` lists them with their values, e.g.
#   DATA_ROOT=data OUTPUT_ROOT=outputs PROFILE=gpu PART_NUM=4 bash sampling/alfworld/expert_generate_response.sh
source "$(dirname "$0")/../common.sh"
sampling_stage alfworld expert_steps
