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

AGENT_CONFIG=${AGENT_CONFIG:-hf}                         # hf | vllm | openai | expert
MODEL_PATH=${MODEL_PATH:-outputs/steca/virtualhome}      # model dir (hf/vllm) or served model name (openai)
DATA_DIR=${DATA_DIR:-data/virtualhome}
SPLIT=${SPLIT:-test}                                     # dev | test (seen file) ; unseen
TEST_PATH=${TEST_PATH:-}                                 # a task jsonl; empty: the split's file in DATA_DIR
OUTPUT_DIR=${OUTPUT_DIR:-outputs/eval/virtualhome/$(basename "$MODEL_PATH")_${SPLIT}}
SFT_FILE=${SFT_FILE:-$DATA_DIR/vh_sft_train.json}        # the instruction is read from it when it exists
ICL_NUM=${ICL_NUM:-1}                                    # in-context examples (0: a model trained without one)
NUM_WORKERS=${NUM_WORKERS:-0}                            # environment processes (0: in-process)
MAX_ACTIVE=${MAX_ACTIVE:-64}                             # episodes in flight (the generation batch)
MAX_TASKS=${MAX_TASKS:-}                                 # only the first N tasks (empty: all)
EXTRA_ARGS=${EXTRA_ARGS:-}                               # anything else for eval_agent.main

cd "$(dirname "$0")/.."
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
      --icl_num "$ICL_NUM" --num_workers "$NUM_WORKERS" --max_active "$MAX_ACTIVE")
if [[ "$AGENT_CONFIG" != "expert" ]]; then args+=(--model_name "$MODEL_PATH"); fi
if [[ -f "$SFT_FILE" ]]; then args+=(--sft_file "$SFT_FILE"); fi
if [[ -n "$MAX_TASKS" ]]; then args+=(--max_tasks "$MAX_TASKS"); fi
# shellcheck disable=SC2086
python -m eval_agent.main "${args[@]}" $EXTRA_ARGS 2>&1 | tee "$OUTPUT_DIR/eval.log"
