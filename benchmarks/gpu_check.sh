#!/usr/bin/env bash
# GPU check: the quickstart pipeline on one GPU in bf16, then its DPO stage alone under DeepSpeed
# ZeRO-2 and ZeRO-3 (one process each), and a table of stage, seconds, tokens/s, peak GPU memory.
#
#   bash benchmarks/gpu_check.sh              # on a machine with a CUDA GPU and rlft installed
#   bash benchmarks/gpu_check.sh --dry-run    # print the commands, run nothing (no GPU needed)
#   PYTHON=.venv/bin/python OUT=runs/gpu_check bash benchmarks/gpu_check.sh
#
# Expected to take well under 8 minutes on one H200 (the CPU quickstart takes ~90 s). Each step is
# cut off after STEP_TIMEOUT seconds (default 300). Results: $OUT/{quickstart_bf16,dpo_zero2,dpo_zero3}/.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
OUT=${OUT:-runs/gpu_check}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

run() {  # print a command, then run it (unless --dry-run)
  echo "+ $*"
  if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

if [[ $DRY_RUN == 0 ]]; then
  if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or failing); run it on a GPU machine," \
      "or pass --dry-run to see the commands" >&2
    exit 2
  fi
  if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: $PYTHON's torch sees no CUDA device (a CPU build of torch?); install a CUDA torch" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi

export WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT_ABS="$(pwd)/$OUT"
start=$SECONDS

# 1. The whole quickstart on one GPU. The TRL stages train in bf16 mixed precision (`trainer.bf16`;
# rlft's default on a bf16 GPU already, set here to be explicit); PPO is rlft's own loop on
# accelerate, which takes its precision from the launch config: single_gpu.yaml says bf16.
run timeout "$STEP_TIMEOUT" "$PYTHON" -m rlft run configs/quickstart.yaml --launch single_gpu \
  --run-dir "$OUT/quickstart_bf16" --force \
  --set stages.sft.trainer.bf16=true --set stages.reward.trainer.bf16=true \
  --set stages.dpo.trainer.bf16=true

# 2. The DPO stage alone under ZeRO-2 and ZeRO-3 with one process. The shipped zero2/zero3 configs
# start 8 processes: derived copies with num_processes 1 (and the DeepSpeed JSON path made absolute)
# go to $OUT/launch/. Each run folder gets the bf16 SFT artifact that DPO starts from.
run mkdir -p "$OUT/launch"
for zero in zero2 zero3; do
  run "$PYTHON" -c "
import sys, yaml
from pathlib import Path
src, out = Path('launch/$zero.yaml'), Path('$OUT_ABS/launch/${zero}_1proc.yaml')
config = yaml.safe_load(src.read_text())
config['num_processes'] = 1
ds = config['deepspeed_config']
ds['deepspeed_config_file'] = str((src.parent / ds['deepspeed_config_file']).resolve())
out.write_text(yaml.safe_dump(config, sort_keys=False))
"
  run rm -rf "$OUT/dpo_$zero"
  run mkdir -p "$OUT/dpo_$zero"
  run cp -r "$OUT/quickstart_bf16/sft" "$OUT/dpo_$zero/sft"
  run timeout "$STEP_TIMEOUT" "$PYTHON" -m rlft run configs/quickstart.yaml --only dpo \
    --launch "$OUT_ABS/launch/${zero}_1proc.yaml" --run-dir "$OUT/dpo_$zero" \
    --set stages.dpo.trainer.bf16=true
done

echo
echo "gpu_check: $((SECONDS - start)) s in all"
run "$PYTHON" benchmarks/gpu_table.py "$OUT/quickstart_bf16" "$OUT/dpo_zero2" "$OUT/dpo_zero3"
