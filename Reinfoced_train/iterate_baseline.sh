#!/usr/bin/env bash
# ETO and IPR beyond their first iteration: explore with the last iteration's agent, rebuild the method's
# training file from its explorations, train from that agent (which is also the DPO reference).
#
#   METHOD=eto ITERATIONS=2 FIRST_MODEL=outputs/eto/alfworld bash Reinfoced_train/iterate_baseline.sh
#   METHOD=ipr ITERATIONS=3 FIRST_MODEL=outputs/ipr/alfworld \
#     EXPERT_STEPS=outputs/sampling/alfworld/expert_steps_mc.jsonl bash Reinfoced_train/iterate_baseline.sh
#
# Iteration 1 is the ordinary stage (data_collection/data_baselines.py + VARIANT=eto|ipr of steca_train.sh)
# and its model is FIRST_MODEL. Iteration k >= 2 runs, into WORK_DIR/iter<k>/:
#   sampling/<env>/explore_generate_response.sh with MODEL_PATH = agent k-1 (explorations, their outcomes);
#   IPR only: sampling/<env>/explore_mc_explore.sh (Monte Carlo step rewards of agent k-1's steps; the expert
#   step rewards EXPERT_STEPS of stage 2 are reused);
#   data_collection/data_baselines.py METHOD; Reinfoced_train/steca_train.sh VARIANT=METHOD from agent k-1.
# The explore script explores from every expert prefix; ETO uses only the explorations from the start (t = 0).
# The sampling and training scripts' own variables (BACKEND, PART_NUM, NUM_ROLLOUTS, LR, PROFILE, ...) pass
# through from the environment; extra arguments go to the trainer. Finished iterations are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# ------------------------------------------------------------------ editable variables
METHOD=${METHOD:-eto}                       # eto | ipr
ITERATIONS=${ITERATIONS:-2}                 # total iterations, the first one included
ENV_NAME=${ENV_NAME:-alfworld}              # alfworld | virtualhome (sampling/<env>/ scripts)
FIRST_MODEL=${FIRST_MODEL:-outputs/${METHOD}/${ENV_NAME}}   # iteration 1's trained agent
SFT_FILE=${SFT_FILE:-data/trajectories/${ENV_NAME}_sft.json}   # expert trajectories of the explored tasks (steca/stage_config.py)
EXPERT_STEPS=${EXPERT_STEPS:-outputs/sampling/${ENV_NAME}/expert_steps_mc.jsonl}   # IPR: expert step rewards
WORK_DIR=${WORK_DIR:-outputs/${METHOD}_iterations/${ENV_NAME}}
# ------------------------------------------------------------------

case "$METHOD" in eto|ipr) ;; *) echo "METHOD must be eto or ipr, got $METHOD" >&2; exit 2 ;; esac
prev=$FIRST_MODEL
for ((k = 2; k <= ITERATIONS; k++)); do
  dir=$WORK_DIR/iter$k
  if [[ -f "$dir/model/config.json" ]]; then echo "iteration $k: $dir/model exists, skipped"; prev=$dir/model; continue; fi
  echo "iteration $k: exploring with $prev"
  MODEL_PATH=$prev OUT_DIR=$dir/sampling SFT_FILE=$SFT_FILE bash "sampling/$ENV_NAME/explore_generate_response.sh"
  steps=$dir/sampling/explore_steps.jsonl
  extra=()
  if [[ "$METHOD" == ipr ]]; then
    MODEL_PATH=$prev OUT_DIR=$dir/sampling SFT_FILE=$SFT_FILE bash "sampling/$ENV_NAME/explore_mc_explore.sh"
    steps=$dir/sampling/explore_steps_mc.jsonl
    extra=(--expert_steps "$EXPERT_STEPS")
  fi
  python data_collection/data_baselines.py "$METHOD" --sft "$SFT_FILE" --explore_steps "$steps" "${extra[@]}" \
    --output "$dir/$METHOD.json"
  MODEL_PATH=$prev VARIANT=$METHOD TRAIN_DATA=$dir/$METHOD.json OUTPUT_DIR=$dir/model \
    bash Reinfoced_train/steca_train.sh "$@"
  prev=$dir/model
done
echo "$METHOD after $ITERATIONS iteration(s): $prev"
