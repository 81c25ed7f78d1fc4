#!/usr/bin/env bash
# Shared by sampling/{alfworld,virtualhome}/*.sh: run one sampling stage in PART_NUM parallel
# processes (--part_num/--part_idx), each writing its own resumable JSONL, then join the parts.
# A rerun resumes every part where it stopped (no record is lost or written twice).
set -euo pipefail

# GPUs (scripts may set these at the top; the environment overrides):
#   TP             tensor-parallel GPUs per vLLM engine (BACKEND=vllm)
#   GPUS_PER_PART  GPUs each part sees (default TP); part i gets its own group of GPU_IDS through
#                  CUDA_VISIBLE_DEVICES (round robin when PART_NUM exceeds the groups), so PART_NUM
#                  parts spread over the node instead of all landing on GPU 0
#   GPU_IDS        the GPUs to use, comma-separated (default: CUDA_VISIBLE_DEVICES, else every GPU
#                  nvidia-smi lists, else none: CPU runs leave CUDA_VISIBLE_DEVICES alone)
#   HF_BATCH       BACKEND=hf: rows per generation call (empty: the backend's default, 64)
TP=${TP:-1}
GPUS_PER_PART=${GPUS_PER_PART:-$TP}
HF_BATCH=${HF_BATCH:-}
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
  _PART_PIDS=()
  # Ctrl-C or a kill of this script stops every part (background processes of a script ignore
  # SIGINT), waits for them, and leaves resumable outputs; each part runs in its own process group,
  # so its environment workers stop with it
  trap '_stop_parts INT 130' INT
  trap '_stop_parts TERM 143' TERM
  local launcher=()
  if command -v setsid >/dev/null; then launcher=(setsid); fi  # a process group per part (util-linux)
  for ((i = 0; i < PART_NUM; i++)); do
    local part="${output%.jsonl}.part${i}of${PART_NUM}.jsonl"
    parts+=("$part")
    devices=$(part_devices "$i")
    ${devices:+env CUDA_VISIBLE_DEVICES="$devices"} ${launcher[@]+"${launcher[@]}"} python sampling/run_sampling.py "$stage" --env "$ENV_NAME" --env_data "$ENV_DATA" --split "$SPLIT" \
      --output "$part" --part_num "$PART_NUM" --part_idx "$i" ${TASK_FILE:+--task_file "$TASK_FILE"} "$@" &
    _PART_PIDS+=($!)
  done
  local failed=0 pid
  for pid in "${_PART_PIDS[@]}"; do wait "$pid" || failed=1; done
  trap - INT TERM
  _PART_PIDS=()
  if [[ $failed -ne 0 ]]; then
    echo "a part of $stage failed; rerun this script to resume" >&2
    exit 1
  fi
  python -m steca.sampling.join_parts --output "$output" "${parts[@]}"
}

# _stop_parts SIGNAL STATUS: forward SIGTERM to every running part's process group, wait until the
# groups are empty, exit with STATUS
_stop_parts() {
  trap - INT TERM
  local pid
  echo "sampling: got SIG$1; stopping ${#_PART_PIDS[@]} part(s); rerun this script to resume" >&2
  for pid in "${_PART_PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${_PART_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
    while kill -0 -- "-$pid" 2>/dev/null; do sleep 0.2; done
  done
  exit "$2"
}

# model arguments shared by the stages that generate. They sample with the evaluation prompt
# (instruction from SFT_FILE, ICL_NUM in-context examples, as eval/*.sh; released: 1).
model_args() {
  local args=(--backend "$BACKEND" --model_path "$MODEL_PATH" --max_new_tokens "$MAX_NEW_TOKENS"
              --num_workers "$NUM_WORKERS" --max_active "$MAX_ACTIVE" --seed "$SEED" --icl_num "${ICL_NUM:-1}")
  if [[ -n "${API_BASE:-}" ]]; then args+=(--api_base "$API_BASE"); fi
  if [[ -n "${MAX_STEPS:-}" ]]; then args+=(--max_steps "$MAX_STEPS"); fi
  if [[ "$BACKEND" == vllm ]]; then args+=(--tensor_parallel_size "$TP"); fi
  if [[ "$BACKEND" == hf && -n "$HF_BATCH" ]]; then args+=(--max_batch_size "$HF_BATCH"); fi
  echo "${args[@]}"
}
