#!/bin/bash
# Run a nasaudit audit on a Ray cluster started over a SLURM allocation (Ray's documented
# head-and-workers pattern: `ray start --head` on the first node, `ray start --address` on the
# others, the driver on the first node). See experiments/cluster/README.md.
#
#   sbatch experiments/cluster/slurm_audit.sh experiments/paper_cifar10.toml /shared/runs/paper
#
# Arguments: CONFIG (TOML) and OUT (the run directory; must be on storage every node sees).
# Resubmitting the same job after a crash or a time-out continues the audit: finished units
# are skipped and interrupted trainings resume from their last epoch checkpoint (--resume).
#
#SBATCH --job-name=nasaudit
#SBATCH --nodes=2
#SBATCH --exclusive
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-task=4
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --output=nasaudit-%j.log

set -euo pipefail

CONFIG=${1:?usage: sbatch slurm_audit.sh CONFIG.toml OUT_DIR}
OUT=${2:?usage: sbatch slurm_audit.sh CONFIG.toml OUT_DIR}
PORT=${RAY_PORT:-6379}
GPUS=${SLURM_GPUS_PER_TASK:-0}
CPUS=${SLURM_CPUS_PER_TASK:-1}

# The environment with nasaudit[ray] installed, the same path on every node (shared file system).
# shellcheck disable=SC1091
source "${NASAUDIT_VENV:-$HOME/nasaudit/.venv}/bin/activate"

# One CPU thread per core a unit asked for (Ray also sets it per task; this covers the driver).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# Token authentication between the nodes: one token per job, on the shared home directory.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/nasaudit-$SLURM_JOB_ID.token}
mkdir -p "$(dirname "$RAY_AUTH_TOKEN_PATH")"
( umask 077; python -c "import secrets; print(secrets.token_hex(32))" > "$RAY_AUTH_TOKEN_PATH" )
trap 'ray stop --force >/dev/null 2>&1 || true; rm -f "$RAY_AUTH_TOKEN_PATH"' EXIT

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${NODES[0]}
HEAD_IP=$(srun --nodes=1 --ntasks=1 -w "$HEAD" hostname --ip-address | awk '{print $1}')
ADDRESS="$HEAD_IP:$PORT"
echo "Ray head on $HEAD ($ADDRESS), ${#NODES[@]} nodes, $GPUS GPUs and $CPUS CPUs each"

srun --nodes=1 --ntasks=1 -w "$HEAD" \
    ray start --head --node-ip-address="$HEAD_IP" --port="$PORT" \
    --num-cpus="$CPUS" --num-gpus="$GPUS" --include-dashboard=false --block &
sleep 15

for node in "${NODES[@]:1}"; do
    srun --nodes=1 --ntasks=1 -w "$node" \
        ray start --address="$ADDRESS" --num-cpus="$CPUS" --num-gpus="$GPUS" --block &
    sleep 5
done

# The driver: plans the grid, submits the units as Ray tasks, and alone writes results.sqlite.
# It checks first that every node sees OUT (a node that does not stops the audit in one line).
nasaudit audit "$CONFIG" --out "$OUT" --engine ray --address "$ADDRESS" --resume --no-progress
