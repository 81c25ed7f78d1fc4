#!/usr/bin/env bash
# The one implementation behind sampling/{alfworld,virtualhome}/*.sh (each script sets its own variables,
# sources this file and calls `sampling_stage ENV STAGE`). A stage runs in PART_NUM parallel processes
# (--part_num/--part_idx), each writing its own resumable JSONL, then the parts are joined. A rerun
# resumes every part where it stopped (no record is lost or written twice). Every variable left empty
# takes the stage configuration's value: python -m steca.stage_config --env ENV --stage sampling
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/stage_common.sh

# sampling_stage ENV STAGE: STAGE is expert_steps | expert_mc | explore_steps | explore_mc
sampling_stage() {
  stage_defaults "$1" sampling
  case "$2" in
    expert_steps) run_parts expert_steps "$EXPERT_STEPS" --sft "$SFT_FILE" ;;
    explore_steps) run_parts explore_steps "$EXPLORE_STEPS" --sft "$SFT_FILE" --temperature "$EXPLORE_TEMPERATURE" \
      $(model_args) ;;
    expert_mc) run_parts mc "$EXPERT_MC" --steps "$EXPERT_STEPS" --num_rollouts "$NUM_ROLLOUTS" \
      --temperature "$MC_TEMPERATURE" $(model_args) ;;
    explore_mc) run_parts mc "$EXPLORE_MC" --steps "$EXPLORE_STEPS" --num_rollouts "$NUM_ROLLOUTS" \
      --temperature "$MC_TEMPERATURE" $(model_args) ;;
    *) echo "unknown sampling stage $2" >&2; return 2 ;;
  esac
}

# run_parts STAGE OUTPUT [extra arguments for sampling/run_sampling.py ...]
# (a non-empty TASK_FILE adds --task_file: a task file overriding the split's, VirtualHome)
run_parts() {
  local stage=$1 output=$2
  shift 2
  mkdir -p "$(dirname "$output")"
  local pids=() parts=()
  for ((i = 0; i < PART_NUM; i++)); do
    local part="${output%.jsonl}.part${i}of${PART_NUM}.jsonl"
    parts+=("$part")
    python sampling/run_sampling.py "$stage" --env "$ENV_NAME" --env_data "$ENV_DATA" --split "$SPLIT" \
      --output "$part" --part_num "$PART_NUM" --part_idx "$i" ${TASK_FILE:+--task_file "$TASK_FILE"} "$@" &
    pids+=($!)
  done
  local failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  if [[ $failed -ne 0 ]]; then
    echo "a part of $stage failed; rerun this script to resume" >&2
    exit 1
  fi
  cat "${parts[@]}" > "$output"
  echo "$stage: $(wc -l < "$output") records in $output"
}

# model arguments shared by the stages that generate
model_args() {
  local args=(--backend "$BACKEND" --model_path "$MODEL_PATH" --max_new_tokens "$MAX_NEW_TOKENS"
              --num_workers "$NUM_WORKERS" --max_active "$MAX_ACTIVE" --seed "$SEED" --max_steps "$MAX_STEPS")
  if [[ -n "${API_BASE:-}" ]]; then args+=(--api_base "$API_BASE"); fi
  echo "${args[@]}"
}
