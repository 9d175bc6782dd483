#!/usr/bin/env bash
# One prepared device session (H100/H200): the GPU checks the issues ask for, in one call (<= 600 s).
#   1. GPU throughput vs PyTorch (CUDA), both convolutions (patches, the default for per-task kernels,
#      and XLA's) vmapped over tasks (#7), one process per setting (SETTINGS, in that order); rows are
#      printed as measured, so a cut-off run still reports. Session 5 (H200) measured 5-way 1-shot MAML
#      and Reptile only; 20-way 1-shot and first-order PyTorch are what is missing, hence the order.
#      Each first checks the PyTorch peers' meta-gradients against mamlx's (torch on the GPU; never
#      run on a GPU before session 7's check was added) and leaves failing peers out of the ratios.
#   2. meanwhile, on 2 pinned CPU cores of the same box: CPU throughput vs PyTorch, same settings
#   3. with TRAIN_LIMIT > 0, after 1: the PRESET training run on the GPU for that long, then a 600-task
#      evaluation (session 1: maml-5w1s; session 5: 170 s of maml-20w1s, benchmarks/results/fewshot.md)
#   4. with TARGET_LIMIT > 0 (default 150 s), after 1 (#24): Omniglot 5-way 1-shot second-order MAML
#      (preset maml-5w1s, validation every 2000 steps) for TARGET_LIMIT seconds of training with float32
#      matrix products, then the same with bfloat16 ones (--matmul-precision), each evaluated on the
#      same EVAL_TASKS test tasks (mamlx eval's fixed seed): accuracy after that much training
#      (target: 98.7 % within 3 minutes) and what bfloat16 products cost in accuracy. The
#      validation curve with its training seconds is in each metrics.jsonl.
#      Default sizing for one 600 s call: GPU_LIMIT=180 + 2 x (150 s + compile, validation, eval).
# Usage (repository root, data copied to .gpu_data/omniglot): bash benchmarks/gpu_session.sh OUTDIR
set -u
OUT=${1:-${OUT:-/tmp/gpu_out}}
R=/tmp/gpu_results  # result files, packed into OUT/results.tar after each step (8-file limit)
rm -rf "$R"; mkdir -p "$OUT" "$R"
pack() { tar -cf "$OUT/results.tar.part" -C "$R" . && mv "$OUT/results.tar.part" "$OUT/results.tar"; }
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MAMLX_CACHE=/tmp/mamlx_cache
TRAIN_LIMIT=${TRAIN_LIMIT:-0}
CPU_LIMIT=${CPU_LIMIT:-380}
GPU_LIMIT=${GPU_LIMIT:-180}
TARGET_LIMIT=${TARGET_LIMIT:-150}
EVAL_TASKS=${EVAL_TASKS:-400}
SETTINGS=${SETTINGS:-omniglot-20w1s omniglot-5w1s}
GPU_CORES=${GPU_CORES:-2-15} CPU_CORES=${CPU_CORES:-0,1}
PRESET=${PRESET:-maml-20w1s}
log() { echo "[$(date +%T)] $*"; }
{
log "device"; nvidia-smi -L; python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
log "CPU throughput on cores 0,1 (background, at most ${CPU_LIMIT}s)"
(
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=2
  end=$(( $(date +%s) + CPU_LIMIT ))
  for s in $SETTINGS; do
    left=$(( end - $(date +%s) )); [ "$left" -gt 10 ] || break
    taskset -c "$CPU_CORES" timeout "$left" python3 benchmarks/throughput.py --quick --torch-malloc tuned \
      --settings "$s" --out "$R/throughput_cpu2_$s" --peer-errors "$R/peer_check_cpu.json"
    echo "cpu throughput $s exit $?"
  done
) > "$OUT/cpu_log.txt" 2>&1 &  # in OUT: comes back even if the call is cut off
CPU_PID=$!
log "GPU throughput vs PyTorch CUDA"
end=$(( $(date +%s) + GPU_LIMIT ))
for s in $SETTINGS; do
  left=$(( end - $(date +%s) )); [ "$left" -gt 10 ] || break
  taskset -c "$GPU_CORES" timeout "$left" python3 benchmarks/throughput.py --repeats 20 \
    --torch-malloc default --settings "$s" --out "$R/throughput_gpu_$s" \
    --peer-errors "$R/peer_check_gpu.json"  # the peers' meta-gradients vs mamlx, once (~30 s)
  log "GPU throughput $s exit $?"
  pack
done
if [ "$TRAIN_LIMIT" -gt 0 ]; then
  log "$PRESET preset on the GPU (limit ${TRAIN_LIMIT}s)"
  t0=$(date +%s)
  taskset -c "$GPU_CORES" timeout "$TRAIN_LIMIT" python3 -m mamlx.cli train omniglot --preset "$PRESET" \
    --data-dir .gpu_data/omniglot --out /tmp/$PRESET --no-progress --checkpoint-every 1000
  log "train exit $? after $(( $(date +%s) - t0 )) s"
  tail -n 3 /tmp/$PRESET/metrics.jsonl
  cp /tmp/$PRESET/metrics.jsonl "$R/${PRESET}_metrics.jsonl"
  taskset -c "$GPU_CORES" timeout 60 python3 -m mamlx.cli eval /tmp/$PRESET --tasks 600 \
    && cp /tmp/$PRESET/eval.json "$R/${PRESET}_eval.json"
fi
if [ "$TARGET_LIMIT" -gt 0 ]; then
  minutes=$(python3 -c "print($TARGET_LIMIT / 60)")
  for prec in float32 bfloat16; do
    run=/tmp/maml5w1s_$prec
    rm -rf "$run"  # never score an earlier session's run
    log "maml-5w1s, $prec matrix products, ${TARGET_LIMIT}s of training"
    taskset -c "$GPU_CORES" timeout $(( TARGET_LIMIT + 90 )) python3 -m mamlx.cli train omniglot \
      --preset maml-5w1s --data-dir .gpu_data/omniglot --out "$run" --no-progress \
      --val-every 2000 --max-minutes "$minutes" --matmul-precision "$prec"
    log "train exit $?"
    cp "$run/metrics.jsonl" "$R/maml5w1s_${prec}_metrics.jsonl"; pack
    taskset -c "$GPU_CORES" timeout 90 python3 -m mamlx.cli eval "$run" --tasks "$EVAL_TASKS" \
      --no-progress && cp "$run/eval.json" "$R/maml5w1s_${prec}_eval.json"
    grep -h '"val' "$run/metrics.jsonl" | tail -n 3
    pack
  done
fi
wait $CPU_PID; grep -v "^ *round" "$OUT/cpu_log.txt" | tail -n 60
pack
log "done"
} 2>&1 | tee "$OUT/log.txt"
