#!/usr/bin/env bash
# bench/predict.sh - scoring throughput: rows/s of the C forward (`moeh predict`, one thread,
# batches of 64) against the PyTorch reference of the same model loaded from the same
# model.safetensors (float32, one thread, batches of 64), on the same synthetic cohort in the
# same run; prints both rates, their ratio, the date, the CPU and the load (docs/model-file.md).
#
# Usage: bench/predict.sh [BUILD_DIR] [ADMISSIONS]   (defaults: build 3000)
# The model is the default one, trained for one epoch by `moeh train` on 300 admissions (the
# weights do not change the cost). Needs Debian's python3-torch and python3-numpy.
set -euo pipefail
build=${1:-build}; adm=${2:-3000}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(cd "$build/bin" && pwd)
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "cpu:  $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') ($(nproc) cores)"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
OPENBLAS_NUM_THREADS=1 /usr/bin/python3 "$root/tests/test_modelfile_torch.py" --bin-dir "$bin" \
    --bench "$adm"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
