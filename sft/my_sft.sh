#!/usr/bin/env bash
# Stage 1: SFT warm-up on expert trajectories (loss on assistant turns only) -> base agent.
#
#   bash sft/my_sft.sh                      # CPU: bootstrap a tiny model if needed, then SFT it
#   PROFILE=gpu MODEL_PATH=/models/Llama-2-7b-chat-hf bash sft/my_sft.sh   # released 7B setting
#   PROFILE=gpu ACCELERATE_CONFIG=sft/configs/zero3.yaml bash sft/my_sft.sh
#   PROFILE=gpu NUM_MACHINES=2 MACHINE_RANK=0 MAIN_PROCESS_IP=node0 NUM_GPUS=8 bash sft/my_sft.sh   # on each node
#   USE_LORA=true bash sft/my_sft.sh        # LoRA adapters (merged into OUTPUT_DIR at the end)
#
# Every variable below can be overridden from the environment. Extra trainer options can be
# appended as arguments: bash sft/my_sft.sh --max_steps 10
# A rerun continues from the last checkpoint-* in OUTPUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

# ------------------------------------------------------------------ editable variables
PROFILE=${PROFILE:-cpu}                       # cpu: tiny model on CPU | gpu: released Llama-2-7B-chat setting
SFT_DATA=${SFT_DATA:-data/alfworld_sft.json}
OUTPUT_DIR=${OUTPUT_DIR:-outputs/sft/alfworld}   # = sampling's MODEL_PATH
USE_LORA=${USE_LORA:-false}
SEED=${SEED:-42}
SAVE_STEPS=${SAVE_STEPS:-200}
if [ "$PROFILE" = "gpu" ]; then
  # released setting: lr 2e-5, 3 epochs, global batch 16, cosine, warmup 3%, max length 4096, bf16, FSDP x4
  MODEL_PATH=${MODEL_PATH:-models/Llama-2-7b-chat-hf}
  # GPUs in total (all nodes); default: the GPUs of this node (the released runs used 5 for reinforced
  # training, 5 x 1 x 3 = batch 15, and 4 for SFT: set NUM_GPUS and GRAD_ACCUM to match them)
  NUM_GPUS=${NUM_GPUS:-$(python -c "import torch; print(torch.cuda.device_count())")}
  if [ "$NUM_GPUS" -lt 1 ]; then echo "PROFILE=gpu: no GPU found (set NUM_GPUS)" >&2; exit 2; fi
  NUM_MACHINES=${NUM_MACHINES:-1}
  MACHINE_RANK=${MACHINE_RANK:-0}
  MAIN_PROCESS_IP=${MAIN_PROCESS_IP:-127.0.0.1}
  MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-29500}
  ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-sft/configs/fsdp.yaml}
  DTYPE=${DTYPE:-float32}                     # fp32 master weights; bf16 mixed precision below
  # FSDP checkpoints activations itself (fsdp_activation_checkpointing); under DeepSpeed the trainer does it
  GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-$(case "$ACCELERATE_CONFIG" in *zero3*) echo true;; *) echo false;; esac)}
  LR=${LR:-2e-5}
  EPOCHS=${EPOCHS:-3}
  PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-2}
  GRAD_ACCUM=${GRAD_ACCUM:-2}                 # 4 GPUs x 2 x 2 = 16
  MAX_LENGTH=${MAX_LENGTH:-4096}
  BF16=${BF16:-true}
else
  # CPU setting for the bootstrap tiny model. Measured on the 151-trajectory sample, 2 shared cores:
  # 2 epochs at batch 2 (152 steps, ~10 CPU-minutes) reach loss 2.8 and always answer in the
  # "Thought: ...\nAction: ..." format, but do not yet pick the right actions: use the full SFT set.
  MODEL_SIZE=${MODEL_SIZE:-tiny}
  MODEL_PATH=${MODEL_PATH:-outputs/bootstrap_${MODEL_SIZE}}
  NPROC=${NPROC:-1}                           # >1: torchrun with the gloo backend
  MASTER_PORT=${MASTER_PORT:-auto}  # auto: torchrun --standalone (the OS picks the port at bind time)
  DTYPE=${DTYPE:-auto}
  GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-false}
  LR=${LR:-3e-3}
  EPOCHS=${EPOCHS:-3}
  PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-2}
  GRAD_ACCUM=${GRAD_ACCUM:-1}
  MAX_LENGTH=${MAX_LENGTH:-2048}
  BF16=${BF16:-false}
fi
# ------------------------------------------------------------------

# torchrun options: a fixed port, or --standalone (its rendezvous store binds port 0: no race)
torchrun_rendezvous() { if [ "$1" = auto ]; then echo --standalone; else echo --master_port "$1"; fi; }

ARGS=(--model_name_or_path "$MODEL_PATH" --data_path "$SFT_DATA" --output_dir "$OUTPUT_DIR"
      --learning_rate "$LR" --num_train_epochs "$EPOCHS" --per_device_train_batch_size "$PER_DEVICE_BATCH"
      --gradient_accumulation_steps "$GRAD_ACCUM" --max_length "$MAX_LENGTH" --lr_scheduler_type cosine
      --warmup_steps 0.03 --bf16 "$BF16" --seed "$SEED" --save_steps "$SAVE_STEPS" --use_lora "$USE_LORA" --dtype "$DTYPE"
      --gradient_checkpointing "$GRADIENT_CHECKPOINTING")

if [ "$PROFILE" = "gpu" ]; then
  accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_GPUS" \
    --num_machines "$NUM_MACHINES" --machine_rank "$MACHINE_RANK" \
    --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$MAIN_PROCESS_PORT" \
    sft/train_sft.py "${ARGS[@]}" "$@"
else
  if [ ! -f "$MODEL_PATH/config.json" ]; then
    python -m steca.training.bootstrap --sft_file "$SFT_DATA" --output_dir "$MODEL_PATH" --size "$MODEL_SIZE" --seed "$SEED"
  fi
  if [ "$NPROC" -gt 1 ]; then
    torchrun --nproc_per_node "$NPROC" $(torchrun_rendezvous "$MASTER_PORT") sft/train_sft.py "${ARGS[@]}" --ddp_backend gloo "$@"
  else
    python sft/train_sft.py "${ARGS[@]}" "$@"
  fi
fi
