#!/usr/bin/env bash
# Runs the whole test suite (CPU and GPU tests) on a machine with a CUDA GPU and writes
# its log and a JUnit report. Usage: bash scripts/gpu_suite.sh [LOG_DIR] [extra pytest args]
# LOG_DIR defaults to ./gpu-test-logs; TESTS_K, when set, is passed as pytest -k. Exit status is pytest's.
set -uo pipefail
cd "$(dirname "$0")/.."
log_dir="${1:-gpu-test-logs}"
shift || true
mkdir -p "$log_dir"
# Kernels compile on first use; workers share CuPy's disk cache.
workers=$(python3 -c 'import os; print(max(1, min(14, (os.cpu_count() or 2) - 2)))')
xdist=()
python3 -c 'import xdist' 2>/dev/null && xdist=(-n "$workers")
python3 - <<'PY' | tee "$log_dir/environment.txt"
import platform, cupy
print("python", platform.python_version(), "cupy", cupy.__version__)
dev = cupy.cuda.runtime.getDeviceProperties(0)
print("gpu", dev["name"].decode(), "cc", f"{dev['major']}.{dev['minor']}", "driver", cupy.cuda.runtime.driverGetVersion(), "runtime", cupy.cuda.runtime.runtimeGetVersion())
PY
PYTHONPATH=. PYTHONUNBUFFERED=1 python3 -m pytest -q -ra --durations=15 "${xdist[@]}" ${TESTS_K:+-k "$TESTS_K"} --junitxml="$log_dir/junit.xml" "$@" tests 2>&1 | tee "$log_dir/pytest.log"
status=${PIPESTATUS[0]}
tail -n 1 "$log_dir/pytest.log" > "$log_dir/summary.txt"
exit "$status"
