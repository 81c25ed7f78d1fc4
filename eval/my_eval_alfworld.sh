#!/usr/bin/env bash
# Evaluate an agent on ALFWorld's seen (valid_seen, 140 games) and unseen (valid_unseen, 134 games)
# splits, then print a small table. Every variable can be overridden from the environment:
#   MODEL_PATH=outputs/steca/alfworld bash eval/my_eval_alfworld.sh               # hf on CPU or GPU
#   AGENT_CONFIG=vllm MODEL_PATH=/models/steca-7b TP=4 bash eval/my_eval_alfworld.sh
#   AGENT_CONFIG=openai MODEL_PATH=gpt-4o bash eval/my_eval_alfworld.sh           # key in $OPENAI_API_KEY
#   AGENT_CONFIG=openai BASE_URL=http://127.0.0.1:8000/v1 MODEL_PATH=my-model bash eval/my_eval_alfworld.sh
# An interrupted run can simply be started again: finished games are not replayed (OVERRIDE=true
# replays them). A split whose games are missing under DATA_DIR is skipped and marked in the table.
set -euo pipefail
# Every variable below can be set here or from the environment; empty means the stage configuration's
# value (`python -m steca.stage_config --env alfworld --stage eval` prints them all).
PROFILE=${PROFILE:-cpu}                              # cpu | gpu (vllm, 40 steps, one in-context example)
DATA_ROOT=${DATA_ROOT:-data}
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs}
AGENT_CONFIG=${AGENT_CONFIG:-}                       # hf | vllm | openai (configs: eval_agent/configs/)
MODEL_PATH=${MODEL_PATH:-}                           # model dir or served name (empty: OUTPUT_ROOT/steca/alfworld)
DATA_DIR=${DATA_DIR:-}                               # holds json_2.1.1/{valid_seen,valid_unseen} (empty: DATA_ROOT/alfworld)
OUTPUT_DIR=${OUTPUT_DIR:-}                           # (empty: OUTPUT_ROOT/eval/alfworld/<model>)
SPLITS=${SPLITS:-"dev test"}                         # dev = seen (valid_seen), test = unseen (valid_unseen)
BASE_URL=${BASE_URL:-}                               # openai: endpoint (empty: api.openai.com)
TP=${TP:-1}                                          # vllm: tensor_parallel_size
OVERRIDE=${OVERRIDE:-false}
EXTRA_ARGS=${EXTRA_ARGS:-}                           # anything else for eval_agent.main
# (NUM_WORKERS, MAX_ACTIVE, ICL_NUM, MAX_STEPS, MAX_NEW_TOKENS and SFT_FILE, the file the instruction is
#  read from, can be set the same way)
cd "$(dirname "$0")/.."
source scripts/stage_common.sh
stage_defaults alfworld eval
declare -A NAME=([dev]=seen [test]=unseen) FOLDER=([dev]=valid_seen [test]=valid_unseen)
declare -A RATE COUNT
for split in $SPLITS; do
  if [[ ! -d "$DATA_DIR/json_2.1.1/${FOLDER[$split]}" ]]; then
    echo "skipping $split: no $DATA_DIR/json_2.1.1/${FOLDER[$split]}" >&2
    RATE[$split]="(no data)"; COUNT[$split]=0
    continue
  fi
  out="$OUTPUT_DIR/$split"
  mkdir -p "$out"
  args=(--exp_config alfworld --split "$split" --agent_config "$AGENT_CONFIG" --model_name "$MODEL_PATH"
        --data_dir "$DATA_DIR" --output_path "$out" --num_workers "$NUM_WORKERS" --max_active "$MAX_ACTIVE"
        --icl_num "$ICL_NUM" --max_steps "$MAX_STEPS" --max_new_tokens "$MAX_NEW_TOKENS")
  [[ -f "$SFT_FILE" ]] && args+=(--sft_file "$SFT_FILE")
  [[ -n "$BASE_URL" ]] && args+=(--base_url "$BASE_URL")
  [[ "$AGENT_CONFIG" == "vllm" ]] && args+=(--tensor_parallel_size "$TP")
  [[ "$OVERRIDE" == "true" ]] && args+=(--override)
  # shellcheck disable=SC2086
  python -m eval_agent.main "${args[@]}" $EXTRA_ARGS 2>&1 | tee "$out/eval.log"
  RATE[$split]=$(grep -o 'Success rate: [0-9.]*' "$out/eval.log" | tail -1 | awk '{print $3}')
  COUNT[$split]=$(find "$out" -maxdepth 3 -name '*.json' ! -name 'summary*.json' | wc -l)
done

echo
echo "| model | agent | split | games | success rate |"
echo "|---|---|---|---|---|"
for split in $SPLITS; do
  echo "| $(basename "$MODEL_PATH") | $AGENT_CONFIG | ${NAME[$split]} ($split) | ${COUNT[$split]} | ${RATE[$split]:-n/a} |"
done
