#!/usr/bin/env bash
# GPU figures (BENCHMARKS.md, figure 9): training steps of real-width models, packed and unpacked, sdpa and
# (where installed) flash-attention 2, bf16, QLoRA 4-bit where bitsandbytes is installed; tokens per second
# and the share of step time spent waiting on data. About 6 minutes on one H200.
#
# The GPU machine's image has torch, peft and accelerate but older transformers and no datasets: first, here,
#   bash bench/gpu_check.sh --wheels      # downloads what it lacks into .whl/ (git ignores it)
# then on the GPU machine, carrying .whl and the two tiny models the workload is tokenized with:
#   bash bench/gpu_check.sh               # carry: .whl fixtures/data/models/qwen2_vl fixtures/data/models/gemma3
# Results: $OUT/gpu_training.json (or out/gpu/), one JSON line per run in the log as it goes.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(transformers==5.23.0 huggingface_hub==2.4.0 tokenizers==0.23.3 datasets==5.2.0 dill==0.4.1
        multiprocess==0.70.19 soundfile==0.14.0 soxr av==18.1.0 fsspec==2026.9.0)

if [ "${1:-}" = "--wheels" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "${WHEELS[@]}"
  exit 0
fi

RESULTS=${OUT:-out/gpu}
mkdir -p "$RESULTS"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export VLMDATA_BENCH_DIR=/tmp/vlmdata-bench
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RESULTS/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$RESULTS/gpu.txt"
timeout 450 python3 -m bench.gpu_training --rows 64 --steps 20 --json "$RESULTS/gpu_training.json" 2>&1 | tee "$RESULTS/log"
