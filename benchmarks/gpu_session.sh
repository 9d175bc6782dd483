#!/usr/bin/env bash
# One prepared device session (H100/H200): everything the issues ask a GPU for, in one call.
#   1. MAML Omniglot 5-way 1-shot, full published preset, timed on the GPU, then 600-task eval
#   2. meanwhile, on 2 pinned CPU cores of the same box: clean CPU throughput vs PyTorch
#   3. GPU throughput vs PyTorch (CUDA)
# Usage (repository root, data copied to .gpu_data/omniglot): bash benchmarks/gpu_session.sh OUTDIR
set -u
OUT=${1:-${OUT:-/tmp/gpu_out}}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MAMLX_CACHE=/tmp/mamlx_cache
TRAIN_LIMIT=${TRAIN_LIMIT:-330}
log() { echo "[$(date +%T)] $*"; }
{
log "device"; nvidia-smi -L; python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
log "CPU throughput on cores 0,1 (background)"
(JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2 taskset -c 0,1 timeout 430 \
   python3 benchmarks/throughput.py --quick --out "$OUT/throughput_cpu2" \
   > /tmp/cpu_tp.log 2>&1; echo "cpu throughput exit $?" >> /tmp/cpu_tp.log) &
CPU_PID=$!
log "MAML 5w1s full preset on the GPU (limit ${TRAIN_LIMIT}s)"
t0=$(date +%s)
taskset -c 2-15 timeout "$TRAIN_LIMIT" python3 -m mamlx.cli train omniglot --preset maml-5w1s \
  --data-dir .gpu_data/omniglot --out /tmp/maml5w1s --no-progress --checkpoint-every 10000
log "train exit $? after $(( $(date +%s) - t0 )) s"
tail -n 3 /tmp/maml5w1s/metrics.jsonl
cp /tmp/maml5w1s/metrics.jsonl "$OUT/maml5w1s_metrics.jsonl"
taskset -c 2-15 timeout 60 python3 -m mamlx.cli eval /tmp/maml5w1s --tasks 600 && cp /tmp/maml5w1s/eval.json "$OUT/maml5w1s_eval.json"
log "GPU throughput vs PyTorch CUDA"
taskset -c 2-15 timeout 130 python3 benchmarks/throughput.py --quick --jax-variants xla/vmap \
  --out "$OUT/throughput_gpu"
wait $CPU_PID; tail -n 30 /tmp/cpu_tp.log
log "done"
} 2>&1 | tee "$OUT/log.txt"
