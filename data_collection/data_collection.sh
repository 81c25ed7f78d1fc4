#!/usr/bin/env bash
# Stage 3 in one command: D_s (expert sub-trajectories), D_c (calibrated trajectories), D_e (explored
# successes) and the merged training file that Reinfoced_train/steca_train.sh reads. Each set is built by
# its own entry point (data_collection/data_{expert,cali,explored}_alfworld.py, data_{org,cali,explored}_vh.py,
# merge_data.py), as in the authors' README; each writes a summary, a problems file and histograms beside it.
#
#   DATA_ROOT=data OUTPUT_ROOT=outputs bash data_collection/data_collection.sh
#   ENV_NAME=virtualhome bash data_collection/data_collection.sh
#   REFLECTOR=openai REFLECTION_MODEL=gpt-4o bash data_collection/data_collection.sh   # the paper's reflections
#
# Every variable below can be set here or from the environment; empty means the stage configuration's
# value (`python -m steca.stage_config --env alfworld --stage collection` prints them all). Extra
# options for the D_c builder (e.g. --replay_check true --env_data DIR) can be appended as arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

# ------------------------------------------------------------------ editable variables
ENV_NAME=${ENV_NAME:-alfworld}        # alfworld | virtualhome
PROFILE=${PROFILE:-cpu}               # cpu: offline stand-in reflections | gpu: GPT-4o (OPENAI_API_KEY)
DATA_ROOT=${DATA_ROOT:-data}
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs}
SFT_FILE=${SFT_FILE:-}                # the expert trajectories (empty: DATA_ROOT/trajectories/<env>_sft.json)
EXPERT_MC=${EXPERT_MC:-}              # sampling's expert step rewards (empty: OUTPUT_ROOT/sampling/<env>/expert_steps_mc.jsonl)
EXPLORE_MC=${EXPLORE_MC:-}            # sampling's explored step rewards
OUT_DIR=${OUT_DIR:-}                  # (empty: OUTPUT_ROOT/data_collection); D_S, D_C, D_E, TRAIN_DATA inside
RULE=${RULE:-}                        # deviation rule of D_c: released (every deviated step) | paper (the first)
REFLECTOR=${REFLECTOR:-}              # offline | openai | hf | base
REFLECTION_MODEL=${REFLECTION_MODEL:-}
# ------------------------------------------------------------------
source scripts/stage_common.sh
stage_defaults "$ENV_NAME" collection
case "$ENV_NAME" in
  alfworld) D_S_PY=data_expert_alfworld.py; D_C_PY=data_cali_alfworld.py; D_E_PY=data_explored_alfworld.py ;;
  virtualhome) D_S_PY=data_org_vh.py; D_C_PY=data_cali_vh.py; D_E_PY=data_explored_vh.py ;;
  *) echo "ENV_NAME must be alfworld or virtualhome, got $ENV_NAME" >&2; exit 2 ;;
esac

steps=(--sft "$SFT_FILE" --expert_steps "$EXPERT_MC" --explore_steps "$EXPLORE_MC")
python "data_collection/$D_S_PY" "${steps[@]}" --output "$D_S"
python "data_collection/$D_C_PY" "${steps[@]}" --rule "$RULE" --reflector "$REFLECTOR" \
  --reflection_model "$REFLECTION_MODEL" --output "$D_C" "$@"
python "data_collection/$D_E_PY" --sft "$SFT_FILE" --explore_steps "$EXPLORE_MC" --output "$D_E"
python data_collection/merge_data.py --output "$TRAIN_DATA" "$D_S" "$D_C" "$D_E"
echo "stage 3: $TRAIN_DATA"
