#!/usr/bin/env bash
# Sourced by run_demo.sh after scripts/stage_common.sh: how the demo's stages share the cores.
# Needs OUT_DIR, JOBS, ENVS_BESIDE and BESIDE_PRIORITY, and the arrays side_names=() side_pids=() and beside_pid= beside_name= set
# by the caller (with `stop_parts_on_signals NAME` and `trap stop_beside EXIT`).
#
# side by side: `side NAME CMD...` starts CMD (a stage, or a function running stages) in the background with
# its output in OUT_DIR/logs/NAME.log, as soon as fewer than JOBS side stages run (a pool: it first waits for any
# one of them to finish); `joined` waits for all of them and fails, naming the log, if one failed. Ctrl-C or
# SIGTERM stops every side stage with all it started (start_part, scripts/stage_common.sh) and waits for them.
side() {
  mkdir -p "$OUT_DIR/logs"
  if [[ "$JOBS" -le 1 ]]; then "${@:2}"; return; fi
  while [[ ${#side_pids[@]} -ge "$JOBS" ]]; do one_joined; done
  echo "started $1 (log: $OUT_DIR/logs/$1.log)"
  start_part "${@:2}" > "$OUT_DIR/logs/$1.log" 2>&1
  side_pids+=("${part_pids[-1]}"); side_names+=("$1")
}
side_failed() {  # side_failed NAME: say so with the end of its log
  echo "stage $1 failed; the end of $OUT_DIR/logs/$1.log:" >&2
  tail -n 20 "$OUT_DIR/logs/$1.log" >&2
}
one_joined() {  # wait for whichever side stage ends first; if it failed, wait for the others too and fail
  local pid= rc=0 i
  wait -n -p pid "${side_pids[@]}" || rc=$?
  for i in "${!side_pids[@]}"; do
    if [[ "${side_pids[$i]}" == "$pid" ]]; then break; fi
  done
  local name=${side_names[$i]}
  unset 'side_pids[i]' 'side_names[i]'
  side_pids=("${side_pids[@]}"); side_names=("${side_names[@]}")
  if [[ $rc -eq 0 ]]; then echo "finished $name"; return 0; fi
  side_failed "$name"
  joined || true
  return 1
}
joined() {
  local rc=0 i
  for i in "${!side_pids[@]}"; do
    if wait "${side_pids[$i]}"; then
      echo "finished ${side_names[$i]}"
    else
      rc=1; side_failed "${side_names[$i]}"
    fi
  done
  side_pids=(); side_names=(); part_pids=(${beside_pid:+"$beside_pid"})
  return $rc
}
# One environment beside the other: `beside NAME FUNCTION ARGS...` starts FUNCTION (a chain of stages) in the
# background with JOBS=1 (its stages one after the other), at BESIDE_PRIORITY (idle: only the CPU time this
# script's own stages leave idle) and its output in OUT_DIR/logs/NAME.log, while this
# script goes on with its own stages side by side; `beside_joined` waits for it and fails, naming the log, if it
# failed; `beside_on` says whether environments run beside each other (JOBS >= 2 and ENVS_BESIDE=true). A failure
# of the caller's own stages stops the one beside (`trap stop_beside EXIT`); a rerun resumes both.
beside_on() { [[ "$JOBS" -ge 2 && "$ENVS_BESIDE" == true ]]; }
one_job() {
  if [[ "$BESIDE_PRIORITY" == idle ]]; then lowest_cpu_priority; fi
  JOBS=1; "$@"
}
# This shell and every process it starts from now on: Linux's SCHED_IDLE (chrt), else nice 19, else unchanged
# (with a message). Only the scheduling changes, never a number (tests/test_demo_same_numbers.py).
lowest_cpu_priority() {
  chrt --idle -p 0 "$BASHPID" >/dev/null 2>&1 || renice -n 19 -p "$BASHPID" >/dev/null 2>&1 ||
    echo "could not lower the CPU priority of the stages beside (no chrt or renice here): normal priority" >&2
}
beside() {
  mkdir -p "$OUT_DIR/logs"
  echo "started $1 beside the next stages, one stage at a time (log: $OUT_DIR/logs/$1.log)"
  start_part one_job "${@:2}" > "$OUT_DIR/logs/$1.log" 2>&1
  beside_pid=${part_pids[-1]}; beside_name=$1
}
beside_joined() {
  if [[ -z "$beside_pid" ]]; then return 0; fi
  local pid=$beside_pid
  beside_pid=; part_pids=()
  if wait "$pid"; then echo "finished $beside_name"; return 0; fi
  echo "$beside_name failed; the end of $OUT_DIR/logs/$beside_name.log:" >&2
  tail -n 20 "$OUT_DIR/logs/$beside_name.log" >&2
  return 1
}
stop_beside() {
  if [[ -n "$beside_pid" ]] && kill -0 "$beside_pid" 2>/dev/null; then
    echo "stopping $beside_name (rerun this script to resume it)" >&2
    kill -TERM -- "-$beside_pid" 2>/dev/null || kill -TERM "$beside_pid" 2>/dev/null || true
    wait "$beside_pid" 2>/dev/null || true
    while kill -0 -- "-$beside_pid" 2>/dev/null; do sleep 0.2; done
  fi
}
