#!/usr/bin/env bash
# One `accelerate launch` per node, for one stage of a pipeline:
#   sbatch --nodes 2 --gpus-per-node 8 launch/multinode/slurm.sh configs/my_pipeline.yaml sft
# The pipeline itself runs earlier stages on the login node or in a previous job; this job runs
# the stage named by $2 with every node's GPUs (`rlft run ... --only STAGE` under accelerate).
#SBATCH --job-name=rlft
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
PIPELINE=${1:?pipeline file}
STAGE=${2:?stage name}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun bash -c "accelerate launch \
  --config_file launch/multinode/accelerate.yaml \
  --num_machines $SLURM_NNODES \
  --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
  --machine_rank \$SLURM_NODEID \
  --main_process_ip $MAIN_IP \
  --main_process_port 29500 \
  -m rlft run $PIPELINE --only $STAGE"
