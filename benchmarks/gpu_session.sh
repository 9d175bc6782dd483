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
#   4. with TARGET_LIMIT > 0 (default 0; session 27 ran it with 170 s), after 1 (#24): Omniglot 5-way
#      1-shot second-order MAML (preset maml-5w1s, validation every 2000 steps) for TARGET_LIMIT
#      seconds of training with float32 matrix products, then as many steps with bfloat16 ones (--matmul-precision), each evaluated on
#      the same EVAL_TASKS test tasks (mamlx eval's fixed seed): the training seconds until validation
#      first reaches 98.7 % (benchmarks/time_to_target.py; target: within 3 minutes), accuracy after
#      that much training, and what bfloat16 products cost in accuracy at the same step.
# Session 27 (H200, jax 0.11.2): step 4 ran (benchmarks/results/h200_time_to_target.md: 98.7 % after 158 s
# of training, 132 s of it the first chunk's compilation); step 1's first JAX row (20-way MAML) took 122 s
# to compile, so step 1 measured one row and no peer. At that compile time the six settings beside
# PyTorch need the whole call: TARGET_LIMIT=0 GPU_LIMIT=540 (one SETTINGS value per call if need be).
# Untried on the compile time (XLA_FLAGS passes through to every step): --xla_gpu_autotune_level=0, or
# --xla_gpu_experimental_enable_fusion_autotuner=false; compare the compile/warm-up column with and without.
# Every step is cut to what is left of SESSION_LIMIT (default 570 s, under the device's 600 s per call);
# a step that no longer fits is skipped with a line saying so, so the call always returns its results.
# Sizing with step 4: GPU_LIMIT=150, then each arm of 4 takes about TARGET_LIMIT + 90 s (start-up, compile,
# validation, evaluation); the bfloat16 arm gets what is left, at most as many steps as the float32 one.
# Usage (repository root, data copied to .gpu_data/omniglot): bash benchmarks/gpu_session.sh OUTDIR
set -u
OUT=${1:-${OUT:-/tmp/gpu_out}}
R=/tmp/gpu_results  # result files, packed into OUT/results.tar after each step (8-file limit)
rm -rf "$R"; mkdir -p "$OUT" "$R"
pack() { tar -cf "$OUT/results.tar.part" -C "$R" . && mv "$OUT/results.tar.part" "$OUT/results.tar"; }
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 MAMLX_CACHE=/tmp/mamlx_cache
TRAIN_LIMIT=${TRAIN_LIMIT:-0}
CPU_LIMIT=${CPU_LIMIT:-380}
GPU_LIMIT=${GPU_LIMIT:-540}  # 150 when step 4 runs too
TARGET_LIMIT=${TARGET_LIMIT:-0}  # 150-170 for #24's time to 98.7 % (measured in session 27)
SESSION_LIMIT=${SESSION_LIMIT:-570}
DEADLINE=$(( $(date +%s) + SESSION_LIMIT ))
left() { echo $(( DEADLINE - $(date +%s) )); }
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
  end=$(( $(date +%s) + CPU_LIMIT )); [ "$end" -le "$DEADLINE" ] || end=$DEADLINE
  for s in $SETTINGS; do
    left=$(( end - $(date +%s) )); [ "$left" -gt 10 ] || break
    taskset -c "$CPU_CORES" timeout "$left" python3 benchmarks/throughput.py --quick --torch-malloc tuned \
      --settings "$s" --out "$R/throughput_cpu2_$s" --peer-errors "$R/peer_check_cpu.json"
    echo "cpu throughput $s exit $?"
  done
) > "$OUT/cpu_log.txt" 2>&1 &  # in OUT: comes back even if the call is cut off
CPU_PID=$!
log "GPU throughput vs PyTorch CUDA"
end=$(( $(date +%s) + GPU_LIMIT )); [ "$end" -le "$DEADLINE" ] || end=$DEADLINE
for s in $SETTINGS; do
  left=$(( end - $(date +%s) )); [ "$left" -gt 10 ] || break
  taskset -c "$GPU_CORES" timeout "$left" python3 benchmarks/throughput.py --repeats 20 \
    --torch-malloc default --settings "$s" --out "$R/throughput_gpu_$s" \
    --peer-errors "$R/peer_check_gpu.json"  # the peers' meta-gradients vs mamlx, once (~30 s)
  log "GPU throughput $s exit $?"
  pack
done
train_s=$(( $(left) - 70 )); [ "$train_s" -le "$TRAIN_LIMIT" ] || train_s=$TRAIN_LIMIT
if [ "$TRAIN_LIMIT" -gt 0 ] && [ "$train_s" -lt 10 ]; then
  log "$PRESET preset skipped: $(left) s left of SESSION_LIMIT"
elif [ "$TRAIN_LIMIT" -gt 0 ]; then
  log "$PRESET preset on the GPU (limit ${train_s}s)"
  t0=$(date +%s)
  taskset -c "$GPU_CORES" timeout "$train_s" python3 -m mamlx.cli train omniglot --preset "$PRESET" \
    --data-dir .gpu_data/omniglot --out /tmp/$PRESET --no-progress --checkpoint-every 1000
  log "train exit $? after $(( $(date +%s) - t0 )) s"
  tail -n 3 /tmp/$PRESET/metrics.jsonl
  cp /tmp/$PRESET/metrics.jsonl "$R/${PRESET}_metrics.jsonl"
  taskset -c "$GPU_CORES" timeout 60 python3 -m mamlx.cli eval /tmp/$PRESET --tasks 600 \
    && cp /tmp/$PRESET/eval.json "$R/${PRESET}_eval.json"
fi
if [ "$TARGET_LIMIT" -gt 0 ]; then
  steps=()  # the bfloat16 arm: the float32 arm's steps, so both are scored at the same step
  for prec in float32 bfloat16; do
    run=/tmp/maml5w1s_$prec
    rm -rf "$run"  # never score an earlier session's run
    train_s=$(( $(left) - 90 )); [ "$train_s" -le "$TARGET_LIMIT" ] || train_s=$TARGET_LIMIT
    if [ "$train_s" -lt 10 ]; then log "maml-5w1s $prec skipped: $(left) s left of SESSION_LIMIT"; continue; fi
    minutes=$(python3 -c "print($train_s / 60)")
    log "maml-5w1s, $prec matrix products, at most ${train_s}s of training ${steps[*]:-}"
    taskset -c "$GPU_CORES" timeout $(( train_s + 50 )) python3 -m mamlx.cli train omniglot \
      --preset maml-5w1s --data-dir .gpu_data/omniglot --out "$run" --no-progress \
      --val-every 2000 --max-minutes "$minutes" --matmul-precision "$prec" ${steps[@]+"${steps[@]}"}
    log "train exit $?"
    cp "$run/metrics.jsonl" "$R/maml5w1s_${prec}_metrics.jsonl"; pack
    python3 benchmarks/time_to_target.py "$run" --target 0.987 | tee "$R/maml5w1s_${prec}_target.txt"
    last=$([ -s "$run/metrics.jsonl" ] && tail -n 1 "$run/metrics.jsonl" \
      | python3 -c "import json, sys; print(json.load(sys.stdin)['step'])")
    [ "$prec" = float32 ] && [ -n "$last" ] && steps=(--steps "$last")
    ev=$(( $(left) > 60 ? 60 : $(left) ))  # never `timeout 0`: that would mean no limit
    if [ "$ev" -lt 10 ]; then log "maml-5w1s $prec evaluation skipped: $(left) s left of SESSION_LIMIT"
    else taskset -c "$GPU_CORES" timeout "$ev" python3 -m mamlx.cli eval "$run" --tasks "$EVAL_TASKS" \
      --no-progress && cp "$run/eval.json" "$R/maml5w1s_${prec}_eval.json"; fi
    grep -h '"val' "$run/metrics.jsonl" | tail -n 3
    pack
  done
  [ -s /tmp/maml5w1s_float32/eval.json ] && [ -s /tmp/maml5w1s_bfloat16/eval.json ] \
    && python3 benchmarks/time_to_target.py /tmp/maml5w1s_float32 --compare /tmp/maml5w1s_bfloat16 \
    | tee "$R/maml5w1s_compare.txt"
fi
wait $CPU_PID; log "$(left) s left of SESSION_LIMIT"; grep -v "^ *round" "$OUT/cpu_log.txt" | tail -n 60
pack
log "done"
} 2>&1 | tee "$OUT/log.txt"
