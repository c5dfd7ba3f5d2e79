#!/usr/bin/env bash
# One GPU session: environment, full test suite, tuning sweep, benchmark; each stage
# with its own time limit so a slow stage cannot starve the rest. Logs go to $OUT
# (or ./device-out). Usage:
#   bash scripts/device_run.sh "tests sweep bench"  [sweep args...]
# Stages: env, tests, sweep, sweep_gi, bench, bench_bwd, wide, ncu, dispatch, main, cache_out.
set -uo pipefail
cd "$(dirname "$0")/.."
final="${OUT:-device-out}"
out="$final/run"   # everything is packed into $final/logs.tgz at the end (few files travel back)
mkdir -p "$out"
stages="${1:-env tests bench}"
shift || true
export PYTHONPATH=.
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# CuPy's kernel cache lives in the checkout (.cupy_cache, ignored by git). Stage
# cache_out packs it into $OUT/cupy_cache.tgz; carried into the next run as
# .cupy_cache.tgz, it is unpacked here, so that run loads the binaries it can reuse.
export CUPY_CACHE_DIR="${CUPY_CACHE_DIR:-$PWD/.cupy_cache}"
if [ -f .cupy_cache.tgz ] && [ ! -d "$CUPY_CACHE_DIR" ]; then
  mkdir -p "$CUPY_CACHE_DIR" && tar xzf .cupy_cache.tgz -C "$CUPY_CACHE_DIR"
fi
commit="${CUPY_DWCONV_COMMIT:-unknown}"
# Results are named by the GPU they were measured on (benchmarks/results/h200.json, ...).
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
case "$gpu_name" in
  *H200*) result="${RESULT:-h200}" ;;
  *H100*) result="${RESULT:-h100}" ;;
  *) result="${RESULT:-gpu}" ;;
esac
limit() { timeout --signal=TERM --kill-after=10 "$@"; }
summary="$out/summary.txt"
: > "$summary"

for stage in $stages; do
  start=$(date +%s)
  case "$stage" in
    env)
      { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv;
        python3 -c 'import cupy, torch, jax, numpy; print("cupy", cupy.__version__, "torch", torch.__version__, "jax", jax.__version__, "numpy", numpy.__version__)'; } > "$out/env.txt" 2>&1
      rc=$? ;;
    tests)
      limit "${TESTS_LIMIT:-300}" bash scripts/gpu_suite.sh "$out/tests" > "$out/tests.log" 2>&1
      rc=$? ;;
    sweep)
      limit "${SWEEP_LIMIT:-240}" python3 benchmarks/sweep.py --json "$out/sweep.json" "$@" > "$out/sweep.log" 2>&1
      rc=$? ;;
    sweep_gi)
      limit "${SWEEP_LIMIT:-240}" python3 benchmarks/sweep.py --pass grad_input --json "$out/sweep_gi.json" "$@" > "$out/sweep_gi.log" 2>&1
      rc=$? ;;
    bench|bench_bwd)
      # Repository-relative output paths: the recorded command reproduces the run.
      mkdir -p benchmarks/results
      extra=""; [ "$stage" = bench_bwd ] && extra="--backward"
      limit "${BENCH_LIMIT:-300}" python3 -m cupy_dwconv.bench --commit "$commit" $extra ${BENCH_ARGS:-} \
        --json "benchmarks/results/$result.json" --plot "benchmarks/results/$result.png" > "$out/bench.log" 2>&1
      rc=$?
      cp "benchmarks/results/$result.json" "benchmarks/results/$result.png" "$out/" 2>/dev/null ;;
    wide)
      # The breadth check beyond the suite (benchmarks/wide.json), WIDE_ARGS for others.
      limit "${WIDE_LIMIT:-240}" python3 benchmarks/wide.py --commit "$commit" ${WIDE_ARGS:-} \
        --json "$out/wide.json" > "$out/wide.log" 2>&1
      rc=$? ;;
    ncu)
      # Hardware counters for a few kernels (clocks left as they are).
      for spec in ${NCU_CASES:-seed_3x7:float32:forward seed_3x7:float16:forward replk_31x31:float32:forward}; do
        IFS=: read -r c_name c_dtype c_pass <<< "$spec"
        limit 120 ncu --clock-control none -k regex:"${NCU_KERNEL:-conv_}" --launch-skip 2 --launch-count 1 \
          --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
          --section LaunchStats --section ComputeWorkloadAnalysis --section SchedulerStats \
          --section InstructionStats --section SourceCounters \
          --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,lts__t_sectors_srcunit_tex_op_write.sum,lts__t_sectors_srcunit_tex_op_read.sum,lts__t_requests_srcunit_tex_op_write.sum" \
          python3 benchmarks/profile_case.py "$c_name" "$c_dtype" "$c_pass" > "$out/ncu_${c_name}_${c_dtype}_${c_pass}.txt" 2>&1
      done
      rc=$? ;;
    dispatch)
      limit 120 python3 benchmarks/dispatch_profile.py > "$out/dispatch.log" 2>&1
      rc=$? ;;
    main)
      limit 120 python3 -m cupy_dwconv > "$out/main.log" 2>&1
      rc=$? ;;
    cache_out)
      tar czf "$final/cupy_cache.tgz" -C "$CUPY_CACHE_DIR" . 2>/dev/null
      rc=$? ;;
    *)
      echo "unknown stage $stage" >> "$summary"; continue ;;
  esac
  echo "stage $stage rc=$rc seconds=$(( $(date +%s) - start ))" | tee -a "$summary"
done
cp "$summary" "$final/summary.txt"
[ -f "$out/$result.json" ] && cp "$out/$result.json" "$out/$result.png" "$final/" 2>/dev/null
tar czf "$final/logs.tgz" -C "$out" . && rm -rf "$out"
