#!/usr/bin/env bash
# One GPU check, one results file (issue 10, item 4). `make gpu-check` runs it.
#
#   1. CUDA is available to torch (exit 3 with a message if not);
#   2. the test suite with SUBSET_RL_TEST_DEVICE=cuda (tests/conftest.py puts every tensor there);
#   3. the benchmarks with --device cuda --quick (bench_distribution.py, bench_rl.py);
#   4. a short SFESS training run on CUDA (`subset-rl train subset_rl/SensorPlacement-v0`).
#
# Every step runs under its own time limit (about 8 minutes in all at most); a step that fails
# or times out is recorded and the next one still runs. Output goes to the terminal and to the
# results file: $OUT/gpu_check_results.txt when $OUT is set, else runs/gpu_check_results.txt.
#
# Usage:
#   benchmarks/gpu_check.sh [--device cuda|cpu] [--output FILE] [--skip-tests]
#   --device cpu     dry run: the same steps on the CPU, no CUDA check (for machines without GPU)
#   --skip-tests     leave out step 2 (the longest; for a quick dry run of the rest)
#   PYTHON=...       interpreter with subset_rl installed (default .venv/bin/python, else python3)
#   TEST_TIMEOUT, BENCH_DIST_TIMEOUT, BENCH_RL_TIMEOUT, TRAIN_TIMEOUT   limits in seconds
#   TRAIN_STEPS      SFESS gradient steps (default 1500, the env's tuned run)
#
# Exit status: 0 all steps passed, 1 some step failed or timed out, 2 usage error, 3 no CUDA.
set -u -o pipefail

cd "$(dirname "$0")/.."

DEVICE=cuda
SKIP_TESTS=0
if [ -n "${OUT:-}" ]; then
    OUTPUT="$OUT/gpu_check_results.txt"
else
    OUTPUT="runs/gpu_check_results.txt"
fi
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="${2:-}"; shift 2 ;;
        --device=*) DEVICE="${1#*=}"; shift ;;
        --output) OUTPUT="${2:-}"; shift 2 ;;
        --output=*) OUTPUT="${1#*=}"; shift ;;
        --skip-tests) SKIP_TESTS=1; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in
    cuda|cuda:[0-9]*|cpu) ;;
    *) echo "gpu_check.sh: --device: expected cuda, cuda:N or cpu, found '$DEVICE'" >&2; exit 2 ;;
esac
if [ -z "$OUTPUT" ]; then
    echo "gpu_check.sh: --output: expected a file name" >&2
    exit 2
fi

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TEST_TIMEOUT=${TEST_TIMEOUT:-210}
BENCH_DIST_TIMEOUT=${BENCH_DIST_TIMEOUT:-45}
BENCH_RL_TIMEOUT=${BENCH_RL_TIMEOUT:-150}
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-75}
TRAIN_STEPS=${TRAIN_STEPS:-1500}

mkdir -p "$(dirname "$OUTPUT")"
: > "$OUTPUT"
TRAIN_DIR="$(dirname "$OUTPUT")/gpu_check_sfess"

log() { printf '%s\n' "$*" | tee -a "$OUTPUT"; }

declare -a SUMMARY=()
FAILED=0
# step NAME LIMIT COMMAND...: runs COMMAND under `timeout LIMIT`, output to the terminal and file.
step() {
    local name="$1" limit="$2"
    shift 2
    log ""
    log "=== $name (limit ${limit}s)"
    log "\$ $*"
    local start=$SECONDS rc
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$OUTPUT"
    rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start)) status
    if [ "$rc" -eq 0 ]; then
        status="ok"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="TIMEOUT after ${limit}s"; FAILED=1
    else
        status="FAILED (exit $rc)"; FAILED=1
    fi
    log "=== $name: $status, ${took}s"
    SUMMARY+=("$(printf '%-34s %-22s %4ss' "$name" "$status" "$took")")
}

log "gpu_check: device $DEVICE, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), results in $OUTPUT"
log "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(
    [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ' (uncommitted changes)')"
log "python $PYTHON: $("$PYTHON" --version 2>&1)"

# 1. CUDA present?
if ! "$PYTHON" -c "import subset_rl" >/dev/null 2>&1; then
    log "gpu_check: $PYTHON cannot import subset_rl; run \`make install\` or set PYTHON=..."
    exit 2
fi
INFO=$("$PYTHON" - "$DEVICE" <<'EOF' 2>&1
import sys

import torch

device = sys.argv[1]
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}, {torch.cuda.device_count()} device(s)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit(3)
    x = torch.randn(1000, 1000, device=device)
    torch.cuda.synchronize()
    print(f"  a matmul on {device}: {float((x @ x).abs().mean()):.3f}")
EOF
)
rc=$?
log "$INFO"
if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 3 ]; then
        log "gpu_check: CUDA is not available to torch on this machine (no GPU, no driver, or a" \
            "CPU-only torch build): nothing to check. Use --device cpu for a dry run."
        exit 3
    fi
    log "gpu_check: the device check failed (exit $rc)"
    exit 1
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    log "$(nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,utilization.gpu \
        --format=csv 2>&1)"
fi

# 2. Test suite on the device.
if [ "$SKIP_TESTS" -eq 0 ]; then
    step "tests (SUBSET_RL_TEST_DEVICE=$DEVICE)" "$TEST_TIMEOUT" \
        env SUBSET_RL_TEST_DEVICE="$DEVICE" "$PYTHON" -m pytest -q -p no:cacheprovider \
        --durations=5
fi

# 3. Benchmarks.
step "bench_distribution --quick" "$BENCH_DIST_TIMEOUT" \
    "$PYTHON" benchmarks/bench_distribution.py --device "$DEVICE" --quick --repeats 3
step "bench_rl --quick" "$BENCH_RL_TIMEOUT" \
    "$PYTHON" benchmarks/bench_rl.py --device "$DEVICE" --quick

# 4. A short SFESS run (the env's tuned settings), trained and evaluated on the device.
rm -rf "$TRAIN_DIR"
step "SFESS train ($TRAIN_STEPS steps)" "$TRAIN_TIMEOUT" \
    "$PYTHON" -m subset_rl.cli train subset_rl/SensorPlacement-v0 --agent sfess \
    --device "$DEVICE" --steps "$TRAIN_STEPS" --quiet --no-plot --logdir "$TRAIN_DIR"

log ""
log "=== summary (device $DEVICE)"
for line in "${SUMMARY[@]}"; do log "$line"; done
if [ "$FAILED" -eq 0 ]; then
    log "gpu_check: all steps passed"
else
    log "gpu_check: some steps failed (see above)"
fi
log "results: $OUTPUT"
exit "$FAILED"
