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
    expert_mc) run_parts mc "$EXPERT_MC" --steps "$EXPERT_STEPS" --sft "$SFT_FILE" --num_rollouts "$NUM_ROLLOUTS" \
      --temperature "$MC_TEMPERATURE" $(model_args) ;;
    explore_mc) run_parts mc "$EXPLORE_MC" --steps "$EXPLORE_STEPS" --sft "$SFT_FILE" --num_rollouts "$NUM_ROLLOUTS" \
      --temperature "$MC_TEMPERATURE" $(model_args) ;;
    *) echo "unknown sampling stage $2" >&2; return 2 ;;
  esac
}

# GPUs (scripts may set these at the top; the environment overrides):
#   TP             tensor-parallel GPUs per vLLM engine (BACKEND=vllm)
#   GPUS_PER_PART  GPUs each part sees (default TP); part i gets its own group of GPU_IDS through
#                  CUDA_VISIBLE_DEVICES (round robin when PART_NUM exceeds the groups), so PART_NUM
#                  parts spread over the node instead of all landing on GPU 0
#   GPU_IDS        the GPUs to use, comma-separated (default: CUDA_VISIBLE_DEVICES, else every GPU
#                  nvidia-smi lists, else none: CPU runs leave CUDA_VISIBLE_DEVICES alone)
#   HF_BATCH       BACKEND=hf: rows per generation call (empty: the backend's default, 64)
#   BATCH_INVARIANT  true | false: a sampled episode depends only on its seed, not on MAX_ACTIVE (empty: the
#                  default of sampling/run_sampling.py: hf on, vllm on for the Monte Carlo stages; see the README)
TP=${TP:-1}
GPUS_PER_PART=${GPUS_PER_PART:-$TP}
HF_BATCH=${HF_BATCH:-}
BATCH_INVARIANT=${BATCH_INVARIANT:-}
if [[ -z "${GPU_IDS:-}" ]]; then
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    GPU_IDS=$CUDA_VISIBLE_DEVICES
  else
    GPU_IDS=$( (nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true) | paste -sd, -)
  fi
fi

# part_devices I: the CUDA_VISIBLE_DEVICES of part I (empty when there are no GPUs)
part_devices() {
  local i=$1 ids
  [[ -z "$GPU_IDS" ]] && return 0
  IFS=, read -ra ids <<< "$GPU_IDS"
  local groups=$(( ${#ids[@]} / GPUS_PER_PART ))
  if (( groups == 0 )); then
    echo "GPUS_PER_PART=$GPUS_PER_PART but GPU_IDS=$GPU_IDS has ${#ids[@]} GPU(s)" >&2
    return 2
  fi
  local g=$(( i % groups )) out=() k
  for ((k = 0; k < GPUS_PER_PART; k++)); do out+=("${ids[g * GPUS_PER_PART + k]}"); done
  (IFS=,; echo "${out[*]}")
}

# run_parts STAGE OUTPUT [extra arguments for sampling/run_sampling.py ...]
# (a non-empty TASK_FILE adds --task_file: a task file overriding the split's, VirtualHome)
run_parts() {
  local stage=$1 output=$2
  shift 2
  mkdir -p "$(dirname "$output")"
  local parts=() devices
  if [[ -n "$GPU_IDS" ]] && (( PART_NUM * GPUS_PER_PART > $(tr ',' '\n' <<< "$GPU_IDS" | wc -l) )); then
    echo "warning: $PART_NUM parts x $GPUS_PER_PART GPU(s) > GPUs in GPU_IDS=$GPU_IDS: parts share GPUs" >&2
  fi
  part_pids=()
  # Ctrl-C or a kill of this script stops every part (each in its own process group, so its
  # environment workers stop with it), waits for them, and leaves resumable outputs
  stop_parts_on_signals sampling
  for ((i = 0; i < PART_NUM; i++)); do
    local part="${output%.jsonl}.part${i}of${PART_NUM}.jsonl"
    parts+=("$part")
    devices=$(part_devices "$i")
    start_part ${devices:+env CUDA_VISIBLE_DEVICES="$devices"} python sampling/run_sampling.py "$stage" --env "$ENV_NAME" \
      --env_data "$ENV_DATA" --split "$SPLIT" --output "$part" --part_num "$PART_NUM" --part_idx "$i" \
      ${TASK_FILE:+--task_file "$TASK_FILE"} "$@"
  done
  local failed=0 pid
  for pid in "${part_pids[@]}"; do wait "$pid" || failed=1; done
  trap - INT TERM
  part_pids=()
  if [[ $failed -ne 0 ]]; then
    echo "a part of $stage failed; rerun this script to resume" >&2
    exit 1
  fi
  python -m steca.sampling.join_parts --output "$output" "${parts[@]}"
}

# model arguments shared by the stages that generate. They sample with the evaluation prompt
# (instruction from SFT_FILE, ICL_NUM in-context examples, as eval/*.sh; released: 1).
model_args() {
  local args=(--backend "$BACKEND" --model_path "$MODEL_PATH" --max_new_tokens "$MAX_NEW_TOKENS"
              --num_workers "$NUM_WORKERS" --max_active "$MAX_ACTIVE" --seed "$SEED" --max_steps "$MAX_STEPS"
              --icl_num "$ICL_NUM")
  if [[ -n "${API_BASE:-}" ]]; then args+=(--api_base "$API_BASE"); fi
  if [[ "$BACKEND" == vllm ]]; then args+=(--tensor_parallel_size "$TP"); fi
  if [[ "$BACKEND" == hf && -n "$HF_BATCH" ]]; then args+=(--max_batch_size "$HF_BATCH"); fi
  if [[ -n "$BATCH_INVARIANT" ]]; then args+=(--batch_invariant "$BATCH_INVARIANT"); fi
  echo "${args[@]}"
}
