#!/usr/bin/env bash
# GPU readiness in one run: the CUDA tests, then the side-by-side bench against torchvision on the GPU
# (fp32 and AMP, then again with `--compile reduce-overhead`), tables and JSON written to a folder.
#
#   OUT=results/ tools/gpu_check.sh             # default folder: benchmarks/gpu_results
#
# Needs a CUDA machine with torch and torchvision installed, pytest and matplotlib; it does not need
# pycocotools or ipywidgets (the tests it runs import only the model, its ops and the fast floor).
# Each step has its own time limit so that the whole check ends within 8 minutes; a failed or timed-out
# step is reported and the next one still runs. Exit status: 0 when every step passed.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/gpu_results}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, whatever is installed
export MPLBACKEND=Agg
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
status=0

step() {  # step NAME SECONDS LOGFILE COMMAND...
    local name=$1 limit=$2 log=$3
    shift 3
    local start=$SECONDS rc
    timeout "$limit" "$@" > "$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        echo "PASS  $name ($((SECONDS - start)) s) -> $log" | tee -a "$SUMMARY"
    else
        status=1
        [ $rc -eq 124 ] && why="timed out after $limit s" || why="exit $rc"
        echo "FAIL  $name ($why) -> $log" | tee -a "$SUMMARY"
    fi
}

step "environment" 60 "$OUT/environment.txt" "$PY" -c "
import torch, torchvision
print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| CUDA', torch.version.cuda)
assert torch.cuda.is_available(), 'CUDA is not available'
print('device:', torch.cuda.get_device_name(0), '| count:', torch.cuda.device_count())
"
if ! grep -q "^device:" "$OUT/environment.txt"; then
    echo "no CUDA device: nothing else to check" | tee -a "$SUMMARY"
    exit 1
fi

# 1. CUDA tests (every CUDA test of the suite; -rs lists anything skipped)
step "CUDA tests" 120 "$OUT/cuda_tests.txt" "$PY" -m pytest -q -rs -p no:cacheprovider \
    tests/test_cuda.py tests/test_ops_roi.py tests/test_ops_nms.py -k "cuda"

# 2. the bench: ResNet-50-FPN, 2 x 800x1333 training (fp32 and AMP), 1 x 800x1333 inference, RoIAlign
step "bench fp32 + AMP" 150 "$OUT/bench_cuda.txt" "$PY" -m mrcnn_lite bench --device cuda --reps 5 \
    --json "$OUT/bench_cuda.json"

# 3. the same with the backbone and RPN head compiled into CUDA graphs
step "bench --compile reduce-overhead" 210 "$OUT/bench_cuda_compiled.txt" "$PY" -m mrcnn_lite bench \
    --device cuda --reps 5 --compile reduce-overhead --json "$OUT/bench_cuda_compiled.json"

for f in bench_cuda.txt bench_cuda_compiled.txt; do  # the tables (the logs' last lines) in the summary
    if [ -s "$OUT/$f" ]; then
        { echo; echo "== $f"; grep -v "^bench:" "$OUT/$f" | tail -n 12; } >> "$SUMMARY"
    fi
done
echo "summary: $SUMMARY"
exit $status
