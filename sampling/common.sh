#!/usr/bin/env bash
# Shared by sampling/{alfworld,virtualhome}/*.sh: run one sampling stage in PART_NUM parallel
# processes (--part_num/--part_idx), each writing its own resumable JSONL, then join the parts.
# A rerun resumes every part where it stopped (no record is lost or written twice).
set -euo pipefail

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

# model arguments shared by the stages that generate. They sample with the evaluation prompt
# (instruction from SFT_FILE, ICL_NUM in-context examples, as eval/*.sh; released: 1).
model_args() {
  local args=(--backend "$BACKEND" --model_path "$MODEL_PATH" --max_new_tokens "$MAX_NEW_TOKENS"
              --num_workers "$NUM_WORKERS" --max_active "$MAX_ACTIVE" --seed "$SEED" --icl_num "${ICL_NUM:-1}")
  if [[ -n "${API_BASE:-}" ]]; then args+=(--api_base "$API_BASE"); fi
  if [[ -n "${MAX_STEPS:-}" ]]; then args+=(--max_steps "$MAX_STEPS"); fi
  echo "${args[@]}"
}
