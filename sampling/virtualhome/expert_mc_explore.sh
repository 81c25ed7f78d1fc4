#!/usr/bin/env bash
# Monte Carlo step rewards of the expert steps: NUM_ROLLOUTS rollouts at TEMPERATURE from each state.
# Variables can be overridden from the environment (paths relative to the repository root), e.g.
#   MODEL_PATH=outputs/sft/virtualhome PART_NUM=4 bash sampling/virtualhome/expert_mc_explore.sh
#   ENV_DATA=D TASK_FILE=D/vh_seen_test.jsonl SFT_FILE=vh_sft.json bash sampling/virtualhome/expert_mc_explore.sh   # a task file
#   without a training split (SFT file: python -m steca.generators.virtualhome_tasks --sft_from ...)
set -euo pipefail
ENV_NAME=virtualhome
ENV_DATA=${ENV_DATA:-data/virtualhome}
SPLIT=${SPLIT:-train}                      # train -> $ENV_DATA/vh_train.jsonl
TASK_FILE=${TASK_FILE:-}                   # a task jsonl overriding the split's file (e.g. the shared vh_seen_test.jsonl)
SFT_FILE=${SFT_FILE:-data/virtualhome_sft.json}
OUT_DIR=${OUT_DIR:-outputs/sampling/virtualhome}
MODEL_PATH=${MODEL_PATH:-outputs/sft/virtualhome}   # the SFT base agent (hf/vllm dir, or served name for openai)
BACKEND=${BACKEND:-hf}                     # hf | vllm | openai
API_BASE=${API_BASE:-}                     # openai: one or more servers, comma-separated
PART_NUM=${PART_NUM:-1}                    # parallel processes (shards)
NUM_WORKERS=${NUM_WORKERS:-0}              # environment worker processes per part
MAX_ACTIVE=${MAX_ACTIVE:-256}              # rollouts in flight per part
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-512}
MAX_STEPS=${MAX_STEPS:-}                   # empty: the environment's 40
NUM_ROLLOUTS=${NUM_ROLLOUTS:-5}
TEMPERATURE=${TEMPERATURE:-1.0}
SEED=${SEED:-0}
ICL_NUM=${ICL_NUM:-1}                      # in-context examples in the sampling prompt (as at evaluation)

cd "$(dirname "$0")/../.."
source sampling/common.sh
run_parts mc "$OUT_DIR/expert_steps_mc.jsonl" --steps "$OUT_DIR/expert_steps.jsonl" --sft "$SFT_FILE" --num_rollouts "$NUM_ROLLOUTS" --temperature "$TEMPERATURE" $(model_args)
