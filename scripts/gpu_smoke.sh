#!/usr/bin/env bash
# The GPU path on one GPU, offline, in at most 10 minutes, with a report ($OUT/report.md).
#
#   bash scripts/gpu_smoke.sh --fetch-wheels DIR    # on a connected machine: the pinned wheels for
#                                                   # Python 3.12 on x86-64 that a GPU node lacks (what the
#                                                   # steps import: scripts/gpu_smoke_checks.py wheels), and
#                                                   # their list, DIR/requirements-smoke.txt
#   bash scripts/gpu_smoke.sh --fetch-wheels DIR --node-has pyarrow,pandas,numpy
#                                                   # the same without packages the node already has (its
#                                                   # versions are used): under the 64 MiB budget
#   bash scripts/gpu_smoke.sh --wheels DIR          # on the GPU node (no network): install DIR's list
#                                                   # (--no-deps), run every step
#   bash scripts/gpu_smoke.sh --dry-run             # on a CPU: build every step's command line and run the
#                                                   # steps a CPU can run (tests/test_gpu_smoke.py does this)
# Options: --parallel N (steps of one phase run side by side, N at a time; default 1; a GPU node with
#          16 cores and a large GPU runs the smoke in about half the time with 6),
#          --only STEP,STEP (run these steps, and install, model and pairs before them: a rerun of the
#          failed ones; a step that reads another's output needs that one too),
#          --data DIR (ALFWorld data root holding json_2.1.1/; default ../shared/data/alfworld),
#          --sft FILE (SFT trajectories; default DIR/alfworld_sft_sample.json), --out DIR (default runs/gpu_smoke).
#
# Steps: the small Llama-architecture model (untied embeddings, use_cache true); the hf backend on CUDA
# (greedy, seeded sampling, stop strings, batched = one at a time); SFT through accelerate with fsdp.yaml
# (one process), checkpoint and resume; reinforced training under FSDP with BETA=0, BETA>0 and LoRA (merged
# after training; the adapter reloads whole and the merge changes the model); the DPO variant; SFT and
# reinforced training under ZeRO-3 and ZeRO-3 offload, and LoRA under ZeRO-3; a few
# evaluation episodes of the trained model on real ALFWorld games through the hf backend. Each step has
# its own time limit and prints one PASS / FAIL / DRY line; the report ends with the table.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
PYTHON312=${PYTHON312:-python3.12}  # --fetch-wheels: builds the source-only packages into wheels

MODE=run WHEELS="" DATA="$REPO/../shared/data/alfworld" SFT="" OUT="$REPO/runs/gpu_smoke" NODE_HAS="" PARALLEL=1 ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --fetch-wheels) MODE=fetch; WHEELS=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --node-has) NODE_HAS=$2; shift 2 ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --dry-run) MODE=dry; shift ;;
    --data) DATA=$2; shift 2 ;;
    --sft) SFT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown option $1 (see the top of $0)" >&2; exit 2 ;;
  esac
done
SFT=${SFT:-$DATA/alfworld_sft_sample.json}

if [ "$MODE" = fetch ]; then
  # pinned versions from requirements-lock.json; torch, its CUDA libraries and vLLM are the node's / too large
  mkdir -p "$WHEELS"
  "$PY" scripts/gpu_smoke_checks.py wheels --node_has "$NODE_HAS" > "$WHEELS/requirements-smoke.txt" || exit 1
  PLATFORMS=(--platform manylinux2014_x86_64)
  for v in 17 27 28; do PLATFORMS+=(--platform "manylinux_2_${v}_x86_64"); done
  # a wheel for CPython 3.12 where the index has one; otherwise the source release built into a wheel
  # by python3.12 (deepspeed, jericho and fast-downward-textworld ship as source only)
  while read -r req; do
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --abi cp312 --abi abi3 --abi none "${PLATFORMS[@]}" --platform any -d "$WHEELS" "$req" 2>/dev/null && continue
    if ! "$PYTHON312" -c "" 2>/dev/null; then echo "python3.12 (PYTHON312=...) is needed to build $req into a wheel" >&2; exit 1; fi
    echo "building $req for Python 3.12"
    "$PYTHON312" -m pip wheel --quiet --no-deps -w "$WHEELS" "$req" || exit 1
  done < "$WHEELS/requirements-smoke.txt"
  size=$(du -sm "$WHEELS" | cut -f1)
  echo "wheels for Python 3.12 x86-64 in $WHEELS: ${size} MiB"
  if [ "$size" -gt 64 ]; then echo "over the 64 MiB budget" >&2; exit 1; fi
  exit 0
fi

mkdir -p "$OUT"
REPORT=$OUT/report.md
# step time limits are for the GPU node; a CPU (dry run) gets TIME_FACTOR times more (default 10)
if [ "$MODE" = dry ]; then DEVICE=cpu DTYPE=float32 SIZE=nano; else DEVICE=cuda DTYPE=bfloat16 SIZE=tiny; fi
TIME_FACTOR=${TIME_FACTOR:-$([ "$MODE" = dry ] && echo 10 || echo 1)}
{ echo "# GPU smoke test ($MODE, $(date -u +%Y-%m-%dT%H:%M:%SZ))"; echo; } > "$REPORT"

# step NAME LIMIT_S WHERE COMMAND...   (WHERE: any = runs on a CPU too, gpu = GPU only; dry: built, not run)
# With --parallel N > 1 a step starts in the background once fewer than N run; `phase` waits for them. Each
# step writes its report block and table row to $OUT/rows/ (named by its position); `phase` appends the
# finished blocks to the report in step order, and the table lists the rows in that order. A step gets
# MAIN_PROCESS_PORT 29500 + its position, so launches that run side by side do not share a port.
source scripts/stage_common.sh
stop_parts_on_signals gpu_smoke.sh
SEQ=0
rm -rf "$OUT/rows" "$OUT/logs"
mkdir -p "$OUT/rows" "$OUT/logs"
run_step() {
  local id=$1 name=$2 limit=$3 where=$4
  shift 4
  local cmd="$*" log="$OUT/logs/$name.log" start rc status took
  if [ "$MODE" = dry ] && [ "$where" = gpu ]; then
    local word file
    for word in $cmd; do  # the files a GPU step would run must exist
      file=${word#*=}
      case "$file" in
        *.sh|*.py|*.yaml) if [ ! -f "$file" ]; then status=FAIL; echo "missing $file" >> "$log"; fi ;;
      esac
    done
    status=${status:-DRY}
    echo "$status $name: $cmd" | tee "$OUT/rows/$id.block"
    echo "| $name | $status | - | \`$cmd\` |" > "$OUT/rows/$id.row"
    return 0
  fi
  start=$(date +%s)
  limit=$(( limit * TIME_FACTOR ))
  MAIN_PROCESS_PORT=$(( 29500 + 10#$id )) timeout "$limit" bash -c "$cmd" > "$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then status=PASS; elif [ $rc -eq 124 ]; then status="FAIL (over ${limit}s)"; else status="FAIL (exit $rc)"; fi
  took=$(( $(date +%s) - start ))
  {
    echo "$status $name (${took}s): $cmd"
    [ "$status" = PASS ] || tail -n 20 "$log" | sed 's/^/    /'
  } | tee "$OUT/rows/$id.block"
  echo "| $name | $status | ${took}s | \`$cmd\` |" > "$OUT/rows/$id.row"
}
step() {
  SEQ=$(( SEQ + 1 ))
  case "$1" in install|model|pairs) ;; *) if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$1,"* ]]; then return 0; fi ;; esac
  local id
  id=$(printf '%02d' "$SEQ")
  if [ "$PARALLEL" -le 1 ]; then run_step "$id" "$@"; return; fi
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
  start_part run_step "$id" "$@"  # scripts/stage_common.sh: a process group of its own, stopped on Ctrl-C
}
phase() {
  wait
  local block
  for block in "$OUT"/rows/*.block; do
    [ -f "$block" ] || continue
    cat "$block" >> "$REPORT"
    mv "$block" "${block%.block}.reported"
  done
}

M=$OUT/model PAIRS=$OUT/pairs.jsonl
GPU_ENV="PROFILE=gpu NUM_GPUS=1 DTYPE=float32 BF16=true SAVE_STEPS=2"
TRAIN_ARGS="--max_steps 2 --save_steps 2 --per_device_train_batch_size 2 --logging_steps 1 --report_to none"
RL="MODEL_PATH=$OUT/sft TRAIN_DATA=$PAIRS MAX_PROMPT_LENGTH=256 MAX_TARGET_LENGTH=512 GRAD_ACCUM=1"

if [ "$MODE" = run ]; then
  # an offline node: no library waits on the network
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  # the list the wheel folder was fetched with (a --node-has folder lacks what the node has), else the whole closure
  LIST=$WHEELS/requirements-smoke.txt
  if [ ! -f "$LIST" ]; then LIST=$OUT/requirements-smoke.txt; "$PY" scripts/gpu_smoke_checks.py wheels --node_has "$NODE_HAS" > "$LIST"; fi
  step install 300 gpu "test -n '$WHEELS' && $PY -m pip install --no-index --no-deps --no-compile --find-links '$WHEELS' -r $LIST && $PY -c 'import torch; assert torch.cuda.is_available(), \"no GPU visible (torch 2.13.0 from the index needs driver >= 580)\"'"
  phase
  # the stage scripts call `python`; a node whose environment has only python3 gets a link to $PY
  if ! command -v python > /dev/null; then
    mkdir -p "$OUT/bin" && ln -sf "$(command -v "$PY")" "$OUT/bin/python" && export PATH="$OUT/bin:$PATH"
  fi
fi
step model 120 any "$PY scripts/gpu_smoke_checks.py model --sft_file $SFT --out $M --size $SIZE"
step pairs 30 any "$PY scripts/gpu_smoke_checks.py pairs --sft_file $SFT --out $PAIRS"
phase
# phase 2: the backend and the three SFT launchers (side by side with --parallel)
step hf_backend 120 any "$PY scripts/gpu_smoke_checks.py hf --model $M --device $DEVICE --dtype $DTYPE"
step sft_fsdp 180 gpu "$GPU_ENV MODEL_PATH=$M SFT_DATA=$SFT OUTPUT_DIR=$OUT/sft MAX_LENGTH=1024 GRAD_ACCUM=1 bash sft/my_sft.sh --max_steps 2 --save_steps 2"
for z in zero3 zero3_offload; do
  step sft_$z 180 gpu "$GPU_ENV ACCELERATE_CONFIG=sft/configs/$z.yaml MODEL_PATH=$M SFT_DATA=$SFT OUTPUT_DIR=$OUT/sft_$z MAX_LENGTH=1024 GRAD_ACCUM=1 bash sft/my_sft.sh --max_steps 2 --save_steps 2"
done
phase
# phase 3: from the FSDP SFT model; the resume runs on a copy, so that the others read a model nobody writes
step sft_fsdp_resume 180 gpu "rm -rf $OUT/sft_resume && cp -r $OUT/sft $OUT/sft_resume && $GPU_ENV MODEL_PATH=$M SFT_DATA=$SFT OUTPUT_DIR=$OUT/sft_resume MAX_LENGTH=1024 GRAD_ACCUM=1 bash sft/my_sft.sh --max_steps 4 --save_steps 2 2>&1 | tee $OUT/logs/resume.out; grep -q 'resuming from' $OUT/logs/resume.out"
step rl_fsdp_beta0 180 gpu "$GPU_ENV $RL OUTPUT_DIR=$OUT/rl_beta0 BETA=0 bash Reinfoced_train/steca_train.sh $TRAIN_ARGS"
step rl_fsdp_beta 180 gpu "$GPU_ENV $RL OUTPUT_DIR=$OUT/rl_beta BETA=0.1 bash Reinfoced_train/steca_train.sh $TRAIN_ARGS"
step rl_fsdp_lora 180 gpu "$GPU_ENV $RL OUTPUT_DIR=$OUT/rl_lora BETA=0.1 USE_LORA=true bash Reinfoced_train/steca_train.sh $TRAIN_ARGS && $PY scripts/gpu_smoke_checks.py lora --run $OUT/rl_lora --base $OUT/sft"
step dpo_fsdp 180 gpu "$GPU_ENV $RL OUTPUT_DIR=$OUT/dpo VARIANT=dpo BETA=0.1 bash Reinfoced_train/steca_train.sh $TRAIN_ARGS"
step rl_zero3_lora 180 gpu "$GPU_ENV ACCELERATE_CONFIG=sft/configs/zero3.yaml $RL OUTPUT_DIR=$OUT/rl_zero3_lora BETA=0.1 USE_LORA=true bash Reinfoced_train/steca_train.sh $TRAIN_ARGS && $PY scripts/gpu_smoke_checks.py lora --run $OUT/rl_zero3_lora --base $OUT/sft"
for z in zero3 zero3_offload; do
  step rl_$z 180 gpu "$GPU_ENV ACCELERATE_CONFIG=sft/configs/$z.yaml $RL OUTPUT_DIR=$OUT/rl_$z BETA=0.1 bash Reinfoced_train/steca_train.sh $TRAIN_ARGS"
done
phase
# phase 4: a few episodes of the trained model (on a CPU: the fresh model) on real ALFWorld dev games, hf backend
EVAL_MODEL=$OUT/rl_beta0
[ "$MODE" = dry ] && EVAL_MODEL=$M
step eval_alfworld 240 any "$PY -m eval_agent.main --exp_config alfworld --split dev --agent_config hf --model_name $EVAL_MODEL --data_dir $DATA --sft_file $SFT --output_path $OUT/eval --max_tasks 2 --max_steps 4 --max_new_tokens 32 --num_workers 1"
phase

{
  echo
  echo "| step | result | time | command |"
  echo "|---|---|---|---|"
  cat "$OUT"/rows/*.row
} >> "$REPORT"
echo "report: $REPORT"
failed=$(cat "$OUT"/rows/*.row | grep -c '| FAIL' || true)
[ "$failed" -eq 0 ]
