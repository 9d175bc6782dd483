#!/usr/bin/env bash
# One prepared device session (H100/H200): the GPU checks the issues ask for, in one call (< 600 s).
#   1. GPU throughput vs PyTorch (CUDA), both convolutions (XLA's and patches) vmapped over tasks (#7)
#   2. meanwhile, on 2 pinned CPU cores of the same box: clean CPU throughput vs PyTorch
#   3. MAML Omniglot 20-way 1-shot, published preset, on the GPU for the time left, then 600-task eval
#      (the 5-way 1-shot preset was run in session 1: benchmarks/results/fewshot.md)
# Usage (repository root, data copied to .gpu_data/omniglot): bash benchmarks/gpu_session.sh OUTDIR
set -u
OUT=${1:-${OUT:-/tmp/gpu_out}}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MAMLX_CACHE=/tmp/mamlx_cache
TRAIN_LIMIT=${TRAIN_LIMIT:-200}
PRESET=${PRESET:-maml-20w1s}
log() { echo "[$(date +%T)] $*"; }
{
log "device"; nvidia-smi -L; python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
log "CPU throughput on cores 0,1 (background)"
(JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2 taskset -c 0,1 timeout 430 \
   python3 benchmarks/throughput.py --quick --out "$OUT/throughput_cpu2" \
   > /tmp/cpu_tp.log 2>&1; echo "cpu throughput exit $?" >> /tmp/cpu_tp.log) &
CPU_PID=$!
log "GPU throughput vs PyTorch CUDA"
taskset -c 2-15 timeout 300 python3 benchmarks/throughput.py --quick --jax-variants xla/vmap,patches/vmap \
  --out "$OUT/throughput_gpu"
log "MAML $PRESET preset on the GPU (limit ${TRAIN_LIMIT}s)"
t0=$(date +%s)
taskset -c 2-15 timeout "$TRAIN_LIMIT" python3 -m mamlx.cli train omniglot --preset "$PRESET" \
  --data-dir .gpu_data/omniglot --out /tmp/$PRESET --no-progress --checkpoint-every 10000
log "train exit $? after $(( $(date +%s) - t0 )) s"
tail -n 3 /tmp/$PRESET/metrics.jsonl
cp /tmp/$PRESET/metrics.jsonl "$OUT/${PRESET}_metrics.jsonl"
taskset -c 2-15 timeout 60 python3 -m mamlx.cli eval /tmp/$PRESET --tasks 600 && cp /tmp/$PRESET/eval.json "$OUT/${PRESET}_eval.json"
wait $CPU_PID; tail -n 30 /tmp/cpu_tp.log
log "done"
} 2>&1 | tee "$OUT/log.txt"
