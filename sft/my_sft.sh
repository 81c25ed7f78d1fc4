#!/usr/bin/env bash
# Stage 1: SFT warm-up on expert trajectories (loss on assistant turns only) -> base agent.
#
#   DATA_ROOT=data OUTPUT_ROOT=outputs bash sft/my_sft.sh    # CPU: bootstrap a nano model if needed, then SFT it
#   PROFILE=gpu MODEL_PATH=/models/Llama-2-7b-chat-hf bash sft/my_sft.sh   # released 7B setting
#   PROFILE=gpu ACCELERATE_CONFIG=sft/configs/zero3.yaml bash sft/my_sft.sh
#   PROFILE=gpu NUM_MACHINES=2 MACHINE_RANK=0 MAIN_PROCESS_IP=node0 NUM_GPUS=8 bash sft/my_sft.sh   # on each node
#   USE_LORA=true bash sft/my_sft.sh        # LoRA adapters (merged into OUTPUT_DIR at the end)
#
# Every variable below can be set here or from the environment; empty means the stage configuration's
# value (`python -m steca.stage_config --env alfworld --stage sft` prints them all). Extra trainer options
# can be appended as arguments: bash sft/my_sft.sh --max_steps 10
# A rerun continues from the last checkpoint-* in OUTPUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

# ------------------------------------------------------------------ editable variables
ENV_NAME=${ENV_NAME:-alfworld}        # alfworld | virtualhome
PROFILE=${PROFILE:-cpu}               # cpu: bootstrapped model on CPU | gpu: released Llama-2-7B-chat setting
DATA_ROOT=${DATA_ROOT:-data}          # as python -m steca.data.download lays it out
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs}
SFT_DATA=${SFT_DATA:-}                # (empty: DATA_ROOT/trajectories/<env>_sft.json)
MODEL_PATH=${MODEL_PATH:-}            # the model to start from (cpu: built by steca.training.bootstrap when missing)
MODEL_SIZE=${MODEL_SIZE:-}            # cpu: nano | mini | tiny | small
OUTPUT_DIR=${OUTPUT_DIR:-}            # (empty: OUTPUT_ROOT/sft/<env>) = sampling's MODEL_PATH
LR=${LR:-}                            # released: 2e-5, 3 epochs, global batch 16, cosine, warmup 3%, length 4096, bf16
EPOCHS=${EPOCHS:-}
NUM_GPUS=${NUM_GPUS:-}                # gpu: GPUs in total (all nodes); 4 x PER_DEVICE_BATCH 2 x GRAD_ACCUM 2 = 16
# (the remaining ones, e.g. PER_DEVICE_BATCH, GRAD_ACCUM, MAX_LENGTH, BF16, DTYPE, SEED, SAVE_STEPS, USE_LORA,
#  ACCELERATE_CONFIG, NPROC, can be set the same way)
# ------------------------------------------------------------------
source scripts/stage_common.sh
stage_defaults "$ENV_NAME" sft
# FSDP checkpoints activations itself (fsdp_activation_checkpointing); under DeepSpeed the trainer does it
GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-$([[ "$PROFILE" == gpu && "$ACCELERATE_CONFIG" == *zero3* ]] && echo true || echo false)}

if [[ "$PROFILE" != "gpu" && ! -f "$MODEL_PATH/config.json" ]]; then
  python -m steca.training.bootstrap --sft_file "$SFT_DATA" --output_dir "$MODEL_PATH" --size "$MODEL_SIZE" --seed "$SEED"
fi
launch_trainer sft/train_sft.py --model_name_or_path "$MODEL_PATH" --data_path "$SFT_DATA" --output_dir "$OUTPUT_DIR" \
  --learning_rate "$LR" --num_train_epochs "$EPOCHS" --per_device_train_batch_size "$PER_DEVICE_BATCH" \
  --gradient_accumulation_steps "$GRAD_ACCUM" --max_length "$MAX_LENGTH" --lr_scheduler_type cosine \
  --warmup_steps 0.03 --bf16 "$BF16" --seed "$SEED" --save_steps "$SAVE_STEPS" --use_lora "$USE_LORA" --dtype "$DTYPE" \
  --gradient_checkpointing "$GRADIENT_CHECKPOINTING" "$@"
