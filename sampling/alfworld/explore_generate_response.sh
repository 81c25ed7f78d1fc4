#!/usr/bin/env bash
# Explored steps: at every expert prefix the base agent's own action (greedy by default) and its exploration to the end.
# Variables can be overridden from the environment (paths relative to the repository root), e.g.
#   MODEL_PATH=outputs/sft/alfworld PART_NUM=4 bash sampling/alfworld/explore_generate_response.sh
set -euo pipefail
ENV_NAME=alfworld
ENV_DATA=${ENV_DATA:-data/alfworld}
SPLIT=${SPLIT:-train}
SFT_FILE=${SFT_FILE:-data/alfworld_sft.json}
OUT_DIR=${OUT_DIR:-outputs/sampling/alfworld}
MODEL_PATH=${MODEL_PATH:-outputs/sft/alfworld}   # the SFT base agent (hf/vllm dir, or served name for openai)
BACKEND=${BACKEND:-hf}                     # hf | vllm | openai
API_BASE=${API_BASE:-}                     # openai: one or more servers, comma-separated
PART_NUM=${PART_NUM:-1}                    # parallel processes (shards)
NUM_WORKERS=${NUM_WORKERS:-0}              # environment worker processes per part
MAX_ACTIVE=${MAX_ACTIVE:-256}              # rollouts in flight per part
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-512}
MAX_STEPS=${MAX_STEPS:-}                   # empty: the environment's 40
NUM_ROLLOUTS=${NUM_ROLLOUTS:-5}
TEMPERATURE=${TEMPERATURE:-0.0}
SEED=${SEED:-0}
ICL_NUM=${ICL_NUM:-1}                      # in-context examples in the sampling prompt (as at evaluation)

cd "$(dirname "$0")/../.."
source sampling/common.sh
run_parts explore_steps "$OUT_DIR/explore_steps.jsonl" --sft "$SFT_FILE" --temperature "$TEMPERATURE" $(model_args)
