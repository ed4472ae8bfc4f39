#!/usr/bin/env bash
# The embedding job, whole, on one GPU host: synthetic UCF101 (mmv_core/datasets/synthetic.py)
# through ingestion, clip sampling and the model at 32x224x224, in each
# precision (float32, the protocol; tensorfloat32; bfloat16), in one process
# that cuts clips in THREADS threads for one model, as a Dataflow GPU worker's
# harness threads do (launch/dataflow.py). Per run it prints clips/s, device
# utilisation from the FLOP counts, the share of the inference thread's time
# spent waiting for host preparation, and start-up, cold and then warm
# (compilation cache). Also the model alone (model_bench.py, each backbone, the
# reference and the fastest formulation, with the largest relative error of
# the GPU's embeddings against CPU float32 ones beside each throughput) and
# the GPU-worker costs per clip (gpu_worker_bench.py: batches sent to a shared
# model process, host preparation on 1 and on all cores).
#
# Run on a GPU machine whose Python has this package and jax with CUDA (e.g.
# inside the worker image: docker run --gpus all --entrypoint bash IMAGE bench/gpu.sh).
# The job's utilisation uses per-device dense peaks: H100 SXM 67 TFLOP/s
# float32 (no tensor cores: the protocol's precision), 494 TF32, 989 bfloat16;
# set PEAK_FLOAT32 / PEAK_TENSORFLOAT32 / PEAK_BFLOAT16 for other cards
# (model_bench.py measures its own). BACKBONES (default s3d) picks the job's backbones, THREADS
# (default 8, a g2-standard-8's vCPUs) its threads, OUT where JSON goes.
#
# MMV_BENCH_SMOKE=1 runs everything at a tiny size (4x32x32 clips, 4 videos),
# on a CPU too: it checks that the script works, its figures mean nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"
out="${OUT:-bench/results}"
threads="${THREADS:-8}"
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2

if [[ "${MMV_BENCH_SMOKE:-0}" == 1 ]]; then
  clip=(--num_frames 4 --size 32)
  job_size=(--classes 2 --videos_per_class 2 --num_train_clips 2 --num_test_windows 2 --batch_size 4)
  model_size=(--num_clips 2 --batch_size 2 --repeats 1)
  worker_size=(--batch_size 2 --repeats 1)
  backbones="${BACKBONES:-s3d}"
  model_backbones=s3d
else
  "$python" -c "import jax; d = jax.devices(); print(d); assert d[0].platform == 'gpu', 'no GPU visible to JAX'"
  clip=(--num_frames 32 --size 224)
  job_size=(--classes 8 --videos_per_class 8 --num_train_clips 10 --num_test_windows 10 --batch_size 16)
  model_size=(--num_clips 32 --batch_size 16)
  worker_size=()
  backbones="${BACKBONES:-s3d}"
  model_backbones=s3d,tsm_resnet_x1,tsm_resnet_x2
fi
peak_float32="${PEAK_FLOAT32:-67}"
peak_tensorfloat32="${PEAK_TENSORFLOAT32:-494}"
peak_bfloat16="${PEAK_BFLOAT16:-989}"

"$python" bench/gpu_worker_bench.py "${clip[@]}" "${worker_size[@]}" --json_out "$out/gpu_worker.json"
for precision in float32 tensorfloat32 bfloat16; do
  peak_var="peak_$precision"
  "$python" bench/model_bench.py --backbones "$model_backbones" "${clip[@]}" "${model_size[@]}" \
    --precision "$precision" --json_out "$out/model_$precision.json"
  for backbone in $backbones; do
    "$python" bench/embed_pipeline_bench.py --backbone "$backbone" --precision "$precision" \
      "${clip[@]}" "${job_size[@]}" --skip_loop --peak_tflops "${!peak_var}" \
      --runner_args="--prefetch_videos=$threads" \
      --json_out "$out/job_${backbone}_$precision.json"
  done
done

"$python" - "$out" <<'EOF'
import glob, json, sys
print("\nbackbone precision run: clips/s (after start-up), device utilisation, host wait share, start-up s")
for path in sorted(glob.glob(f"{sys.argv[1]}/job_*.json")):
  job = json.load(open(path))
  for name, run in job["pipeline"].items():
    print(f"{job['backbone']} {job['precision']} {name}: {run['clips_per_s']:.1f} "
          f"({run['clips_per_s_after_startup']:.1f}), {run.get('device_utilisation', 0):.1%}, "
          f"{run['host_wait_share']:.0%}, {run['startup_s']:.1f}")
EOF
