#!/usr/bin/env bash
# Embedding throughput and model FLOP utilisation on one accelerator, for each
# backbone at 32x224x224. Run on a GPU machine whose Python has this package
# and jax with CUDA (e.g. inside the worker image: docker run --gpus all
# --entrypoint bash IMAGE bench/gpu.sh). Peak figures are per device, dense:
# H100 SXM 67 TFLOP/s float32 (no tensor cores: the protocol's precision),
# 989 TFLOP/s bfloat16; set PEAK_F32 / PEAK_BF16 for other cards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"
out="${OUT:-bench/results}"
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
"$python" -c "import jax; d = jax.devices(); print(d); assert d[0].platform == 'gpu', 'no GPU visible to JAX'"
"$python" bench/embed_bench.py --num_clips 32 --batch_size 16 --compute_dtype float32 \
  --peak_tflops "${PEAK_F32:-67}" --json_out "$out/gpu_float32.json"
"$python" bench/embed_bench.py --num_clips 32 --batch_size 16 --compute_dtype bfloat16 \
  --peak_tflops "${PEAK_BF16:-989}" --json_out "$out/gpu_bfloat16.json"
