#!/usr/bin/env bash
# Evaluate an agent on STeCa's VirtualHome test tasks (symbolic evolving-graph simulator, no Unity).
# Every variable can be overridden from the environment, e.g.
#   MODEL_PATH=outputs/steca/virtualhome SPLIT=test bash eval/my_eval_vh.sh
#   AGENT_CONFIG=expert bash eval/my_eval_vh.sh          # the ground-truth programs (sanity check)
# DATA_DIR holds scene_graphs/, resources/ and the task files (vh_seen_test.jsonl, ...); the shared
# bundle is ../shared/data/virtualhome, a generated mini benchmark is any folder written by
#   python -m steca.generators.virtualhome_tasks --out DIR
# The run prints "Reachable success rate: X (N tasks)" and, last, "Success rate: X".
set -euo pipefail
# Every variable below can be set here or from the environment; empty means the stage configuration's
# value (`python -m steca.stage_config --env virtualhome --stage eval` prints them all).
PROFILE=${PROFILE:-cpu}                                  # cpu | gpu (vllm, 40 steps, one in-context example)
DATA_ROOT=${DATA_ROOT:-data}
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs}
AGENT_CONFIG=${AGENT_CONFIG:-}                           # hf | vllm | openai | expert
MODEL_PATH=${MODEL_PATH:-}                               # model dir or served name (empty: OUTPUT_ROOT/steca/virtualhome)
DATA_DIR=${DATA_DIR:-}                                   # (empty: DATA_ROOT/virtualhome)
SPLIT=${SPLIT:-test}                                     # dev | test (seen file) ; unseen
TEST_PATH=${TEST_PATH:-}                                 # a task jsonl; empty: the split's file in DATA_DIR
OUTPUT_DIR=${OUTPUT_DIR:-}                               # (empty: OUTPUT_ROOT/eval/virtualhome/<model>/<SPLIT>)
MAX_TASKS=${MAX_TASKS:-}                                 # only the first N tasks (empty: all)
EXTRA_ARGS=${EXTRA_ARGS:-}                               # anything else for eval_agent.main
# (NUM_WORKERS, MAX_ACTIVE, ICL_NUM, MAX_STEPS, MAX_NEW_TOKENS and SFT_FILE, the file the instruction is
#  read from when it exists, can be set the same way)
cd "$(dirname "$0")/.."
source scripts/stage_common.sh
output_dir_set=$OUTPUT_DIR
stage_defaults virtualhome eval
[[ -n "$output_dir_set" ]] || OUTPUT_DIR="$OUTPUT_DIR/$SPLIT"   # the configured folder: one subfolder per split
if [[ -z "$TEST_PATH" ]]; then
  case "$SPLIT" in
    unseen) TEST_PATH="$DATA_DIR/vh_unseen_test.jsonl" ;;
    train) TEST_PATH="$DATA_DIR/vh_train.jsonl" ;;
    *) TEST_PATH="$DATA_DIR/vh_seen_test.jsonl" ;;
  esac
fi
[[ -f "$TEST_PATH" ]] || { echo "no task file $TEST_PATH (set TEST_PATH or DATA_DIR)" >&2; exit 1; }
mkdir -p "$OUTPUT_DIR"

args=(--exp_config virtualhome --split "$SPLIT" --agent_config "$AGENT_CONFIG"
      --test_path "$TEST_PATH" --data_dir "$DATA_DIR" --output_path "$OUTPUT_DIR"
      --icl_num "$ICL_NUM" --num_workers "$NUM_WORKERS" --max_active "$MAX_ACTIVE" --max_steps "$MAX_STEPS"
      --max_new_tokens "$MAX_NEW_TOKENS")
if [[ "$AGENT_CONFIG" != "expert" ]]; then args+=(--model_name "$MODEL_PATH"); fi
if [[ -f "$SFT_FILE" ]]; then args+=(--sft_file "$SFT_FILE"); fi
if [[ -n "$MAX_TASKS" ]]; then args+=(--max_tasks "$MAX_TASKS"); fi
# shellcheck disable=SC2086
python -m eval_agent.main "${args[@]}" $EXTRA_ARGS 2>&1 | tee "$OUTPUT_DIR/eval.log"
