#!/usr/bin/env bash
# The GPU check in one command (designed for < 10 minutes on one H100): build with CUDA, run the test
# suite on CUDA, the three kernel microbenchmarks (each row then beside its roofline bound, as a fraction
# of it: bench/gpu_static.py) and the verification-latency run of an 8B-shaped random-weight Llama.
# Everything lands in bench/results/gpu/ (commit it, naming the device).
#
#     bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/results/gpu
mkdir -p "$out"
PY=${PY:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.txt"

# 1. build with CUDA (torch must be a CUDA build; nvcc on PATH)
$PY -m pip install -q --no-build-isolation -e . 2>&1 | tail -2
$PY -c "import torch; assert torch.ops.specdec.built_with_cuda(), 'extension built without CUDA'; print('CUDA ops built')"

# 2. tests (CUDA cases run here; the interpreter-only ones still run on CPU)
$PY -m pytest -q -x 2>&1 | tee "$out/pytest.txt" | tail -5

# 3. microbenchmarks, each against its baseline in the same run
$PY bench/bench_compaction.py --out "$out/compaction.md"
$PY bench/bench_tree_attention.py --n 1 8 16 64 128 256 --out "$out/tree_attention.md"  # roofline.md's N
$PY bench/bench_rejection_sampling.py --out "$out/rejection_sampling.md"

# 3b. measured time beside the roofline bound (bench/results/roofline.md's model) for every case above
$PY bench/gpu_static.py measured --device "$(head -2 "$out/device.txt" | tail -1 | cut -d, -f1)" \
  --out "$out/roofline_vs_measured.md" "$out/tree_attention.md" "$out/rejection_sampling.md" "$out/compaction.md"

# 4. end to end: verification latency vs tree size on an 8B-shaped target (bf16, ~16 GB of weights)
$PY bench/gpu_verify_latency.py --shape 8b --out "$out"
echo "results in $out"
