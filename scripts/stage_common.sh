#!/usr/bin/env bash
# Sourced by every stage script (from the repository root) after its editable variables:
#   stage_defaults ENV STAGE
# sets every variable of STAGE that the script (or the caller's environment) left empty to the stage
# configuration's value (steca/stage_config.py), derived from DATA_ROOT, OUTPUT_ROOT and PROFILE; what
# the script set is passed as an override, so what derives from it follows.
stage_defaults() {
  local overrides=() name
  for name in $(compgen -v); do
    if [[ $name =~ ^[A-Z][A-Z0-9_]*$ && -n "${!name:-}" ]]; then overrides+=("$name=${!name}"); fi
  done
  local assignments
  assignments=$(python -m steca.stage_config --env "$1" --stage "$2" --shell --profile "${PROFILE:-cpu}" \
    --data_root "${DATA_ROOT:-data}" --output_root "${OUTPUT_ROOT:-outputs}" -- "${overrides[@]}") || return 1
  eval "$assignments"
}

# launch_trainer ENTRY ARGS...: run a training entry point. PROFILE=gpu: accelerate launch with
# ACCELERATE_CONFIG over NUM_GPUS GPUs (NUM_MACHINES, MACHINE_RANK, MAIN_PROCESS_IP, MAIN_PROCESS_PORT for
# several nodes, where auto means 29500; on one node MAIN_PROCESS_PORT=auto, the default, takes a free port,
# so that trainings started side by side, as the demo's gpu profile does, never share one); PROFILE=cpu: one
# process, or NPROC processes under torchrun with the gloo backend (MASTER_PORT: a fixed port, or auto =
# torchrun --standalone, whose rendezvous store binds port 0: no race).
launch_trainer() {
  if [[ "$PROFILE" == "gpu" ]]; then
    # NUM_GPUS 0 (the default): the GPUs of this node (the released runs used 4 for SFT and 5 for
    # reinforced training: set NUM_GPUS and GRAD_ACCUM to match their global batch of 16 / 15)
    if [[ "${NUM_GPUS:-0}" -eq 0 ]]; then NUM_GPUS=$(python -c "import torch; print(torch.cuda.device_count())"); fi
    if [[ "$NUM_GPUS" -lt 1 ]]; then echo "PROFILE=gpu: no GPU found (set NUM_GPUS)" >&2; return 2; fi
    local port=${MAIN_PROCESS_PORT:-auto}
    if [[ "$port" == auto && "${NUM_MACHINES:-1}" -gt 1 ]]; then port=29500; fi  # every node must name the same
    if [[ "$port" == auto ]]; then port=$(python -m steca.training.free_port) || return 1; fi
    accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_GPUS" \
      --num_machines "${NUM_MACHINES:-1}" --machine_rank "${MACHINE_RANK:-0}" \
      --main_process_ip "${MAIN_PROCESS_IP:-127.0.0.1}" --main_process_port "$port" "$@"
  elif [[ "${NPROC:-1}" -gt 1 ]]; then
    local rendezvous=(--standalone)
    if [[ "${MASTER_PORT:-auto}" != auto ]]; then rendezvous=(--master_port "$MASTER_PORT"); fi
    # --use_cpu: without it the Trainer does not wrap the model for gloo on a machine without a GPU, and each
    # process trained alone on its share of the batches (rank 0's model was saved); measured on 2026-12-04
    torchrun --nproc_per_node "$NPROC" "${rendezvous[@]}" "$@" --ddp_backend gloo --use_cpu true
  else
    python "$@"
  fi
}

# glibc's allocator hands every freed block above its mmap threshold back to the kernel, so a process that
# allocates and frees the same large tensors step after step (KV caches, logits) faults their pages in again
# each time: a demo evaluation spent 21 of its 46 CPU-seconds in the kernel. Keeping blocks up to 32 MiB
# (glibc's largest mmap threshold on 64-bit) and up to 256 MiB of free heap cuts that to 1 s, with no larger
# peak memory (932 MB without, 874 MB with). Numbers do not change.
# MALLOC_TUNING=false (or a GLIBC_TUNABLES of your own) leaves glibc's defaults.
if [[ "${MALLOC_TUNING:-true}" == true && -z "${GLIBC_TUNABLES:-}" ]]; then
  export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456
fi

# Background parts that never outlive their script. A script run without a terminal starts background
# commands with SIGINT ignored, so Ctrl-C alone would leave them running and writing.
#   start_part CMD...         run CMD (a command or a function) in the background, in a process group of
#                             its own, and append its pid to part_pids
#   stop_parts_on_signals WHO on SIGINT or SIGTERM, call stop_parts (WHO names the script in its message)
#   stop_parts SIGNAL STATUS WHO
#                             send SIGTERM to every part's process group (the part and everything it
#                             started in the foreground), wait until every group is empty, exit STATUS
part_pids=()
start_part() {
  local monitor=0
  if [[ $- == *m* ]]; then monitor=1; fi
  set -m  # job control for this fork only: the part gets a process group of its own
  "$@" &
  part_pids+=($!)
  if [[ $monitor -eq 0 ]]; then set +m; fi
}
stop_parts_on_signals() {
  trap "stop_parts INT 130 '$1'" INT
  trap "stop_parts TERM 143 '$1'" TERM
}
stop_parts() {
  trap - INT TERM
  local pid
  echo "$3: got SIG$1; stopping ${#part_pids[@]} part(s); rerun this script to resume" >&2
  for pid in "${part_pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${part_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
    while kill -0 -- "-$pid" 2>/dev/null; do sleep 0.2; done
  done
  exit "$2"
}
