"""The embedding job's clips/s and start-up, cold and warm, against the original loop.

Both read the same video cache (filled first by a run with tiny clips, not
timed), use the same random checkpoint and cut the same clips:
- `pipeline`: `python -m pipelines.embed` on the local runner (its default:
  one process, in memory), run twice with the same flags: `cold` with an
  empty JAX compilation cache, `warm` with the cache the first run filled.
  Each is timed end to end; `startup_s` is the time to the first embedded
  video (the first "videos embedded" progress line). From the job's metrics:
  host preparation (clip cutting) and inference seconds summed over workers,
  `host_wait_share` (the share of the inference thread's time spent waiting
  for clips rather than in batch calls) and, with `--peak_tflops`, device
  utilisation after start-up (clips x FLOPs per clip / s / peak);
- `original_loop` (skipped with `--skip_loop`): one process, one clip at a
  time, the clip's frames decoded again from JPEG for every clip, the model
  run on that one clip in the reference formulation (the layers as trained,
  as the original ran them). Timed as a user runs it, like the job: its own
  process from start to end (imports, loading the checkpoint file,
  compiling, reading the cache, the loop); `loop_s` is the loop alone.

    python bench/embed_pipeline_bench.py                  # 8 videos, 16x112x112 clips
    python bench/embed_pipeline_bench.py --videos_per_class 4 --size 224 --num_frames 32
"""

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import original
from mmv_core import checkpoints
from mmv_core.datasets import synthetic
from mmv_core import video
from mmv_core.video import video_cache
from mmv_core.embedder import VideoEmbedder
from mmv_core.embedder_config import PRECISIONS, EmbedderConfig
from mmv_core.models import mmv
from pipelines import embed

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def original_loop(cached: list[video_cache.CachedVideo], embedder: VideoEmbedder, args) -> int:
  """The original evaluation's loop (TensorFlow's kernels); returns the number of clips embedded."""
  clips = 0
  for v in cached:
    windows = video.test_window_indices(len(v.frames), args.num_frames, 2, args.num_test_windows)
    for window in windows:
      embedder.embed_clips(original.test_clip(v.frames, window, args.size)[None])
      clips += 1
    for i in range(args.num_train_clips):
      rng = np.random.default_rng(video.video_seed(v.video_id, i))
      indices = video.train_clip_indices(len(v.frames), args.num_frames, 2, rng)
      embedder.embed_clips(original.train_clip(v.frames, indices, args.size, rng)[None])
      clips += 1
  return clips


def run_original_loop(root: pathlib.Path, args) -> None:
  """The loop over the job's video cache, in this (fresh) process; prints JSON."""
  embedder = VideoEmbedder.from_checkpoint(
      str(root / f"mmv_{args.backbone}.pkl"),
      config=EmbedderConfig(batch_size=1, precision=args.precision, formulation="reference"),
  )
  cached = [
      v
      for shard in sorted((root / "work").rglob("*.tfrecord"))
      for v in video_cache.read_shard(str(shard))
  ]
  start = time.perf_counter()
  clips = original_loop(cached, embedder, args)
  print(json.dumps({"clips": clips, "loop_s": time.perf_counter() - start}))


def run_job(flags: list[str], output_dir: pathlib.Path) -> dict:
  """Runs the job once; returns its wall seconds, seconds to the first video and timings."""
  start = time.perf_counter()
  job = subprocess.Popen(
      [sys.executable, "-m", "pipelines.embed", *flags, f"--output_dir={output_dir}", "--verbose"],
      cwd=REPO_ROOT,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
  )
  startup_s, timings, lines = None, None, []
  for line in job.stdout:
    lines.append(line)
    if startup_s is None and embed.VIDEOS_EMBEDDED in line:
      startup_s = time.perf_counter() - start
    if embed.TIMINGS_PREFIX in line:
      timings = json.loads(line.split(embed.TIMINGS_PREFIX, 1)[1])
  if job.wait():
    raise RuntimeError(f"the job failed:\n{''.join(lines[-40:])}")
  wall_s = time.perf_counter() - start
  counts = json.loads((output_dir / "run.json").read_text())["counts"]
  return {
      "seconds": wall_s,
      "startup_s": startup_s,
      "clips": counts["clips_written_train"] + counts["clips_written_test"],
      **timings,
  }


def summarize(run: dict, flops_per_clip: float, peak_tflops: float | None) -> dict:
  """Adds clips/s (whole run and after start-up), host share and device utilisation."""
  steady_s = run["seconds"] - run["startup_s"]
  run["clips_per_s"] = run["clips"] / run["seconds"]
  run["clips_per_s_after_startup"] = run["clips"] / steady_s
  run["host_wait_share"] = run["host_wait_s"] / (run["host_wait_s"] + run["inference_s"])
  if peak_tflops:
    run["device_utilisation"] = (
        run["clips_per_s_after_startup"] * flops_per_clip / (peak_tflops * 1e12)
    )
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--backbone", choices=mmv.BACKBONES, default="s3d")
  parser.add_argument("--classes", type=int, default=4)
  parser.add_argument("--videos_per_class", type=int, default=2)
  parser.add_argument("--num_frames", type=int, default=16)
  parser.add_argument("--size", type=int, default=112)
  parser.add_argument("--num_train_clips", type=int, default=4)
  parser.add_argument("--num_test_windows", type=int, default=4)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--precision", choices=PRECISIONS, default="float32")
  parser.add_argument(
      "--runner_args",
      default="",
      help='more flags for the job, e.g. "--prefetch_videos=8" (a GPU host: clips cut '
      "in 8 threads)",
  )
  parser.add_argument(
      "--peak_tflops",
      type=float,
      default=None,
      help="the device's peak TFLOP/s in --precision, for utilisation",
  )
  parser.add_argument("--skip_loop", action="store_true", help="time only the job")
  parser.add_argument("--json_out", default=None)
  parser.add_argument("--loop_only", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.loop_only:
    run_original_loop(pathlib.Path(args.loop_only), args)
    return

  root = pathlib.Path(tempfile.mkdtemp(prefix="mmv_bench_"))
  data = synthetic.write_dataset(
      str(root / "data"),
      num_classes=args.classes,
      videos_per_class=args.videos_per_class,
      clips_per_group=1,
      duration_s=3.0,
  )
  checkpoint = root / f"mmv_{args.backbone}.pkl"
  checkpoints.write_random_checkpoint(checkpoint, *checkpoints.checkpoint_shapes(args.backbone))
  common = [
      f"--checkpoint_path={checkpoint}",
      f"--work_dir={root / 'work'}",
      f"--video_zip={data.video_zip}",
      f"--splits_zip={data.splits_zip}",
      f"--jax_cache_dir={root / 'jax_cache'}",
      *shlex.split(args.runner_args),
  ]
  # Fills the video cache: ingestion is not what is compared.
  run_job(
      [
          *common,
          "--num_frames=2",
          "--min_resize=32",
          "--crop_size=32",
          "--num_train_clips=1",
          "--num_test_windows=1",
          "--batch_size=1",
          f"--jax_cache_dir={root / 'warmup_jax_cache'}",
      ],
      root / "warmup",
  )
  flags = [
      *common,
      f"--num_frames={args.num_frames}",
      f"--min_resize={args.size}",
      f"--crop_size={args.size}",
      f"--num_train_clips={args.num_train_clips}",
      f"--num_test_windows={args.num_test_windows}",
      f"--batch_size={args.batch_size}",
      f"--precision={args.precision}",
  ]
  flops_per_clip = (
      mmv.SPEC_GFLOPS[args.backbone] * 1e9
      if (args.num_frames, args.size) == (32, 224)
      else mmv.vid_repr_flops(args.backbone, args.num_frames, args.size)
  )
  result = {
      "backbone": args.backbone,
      "precision": args.precision,
      "videos": args.classes * args.videos_per_class,
      "clip_shape": [args.num_frames, args.size, args.size, 3],
      "batch_size": args.batch_size,
      "cores": os.cpu_count(),
      "runner_args": args.runner_args,
      "gflops_per_clip": flops_per_clip / 1e9,
      "pipeline": {
          name: summarize(run_job(flags, root / name), flops_per_clip, args.peak_tflops)
          for name in ("cold", "warm")
      },
  }
  if not args.skip_loop:
    start = time.perf_counter()
    loop = json.loads(
        subprocess.run(
            [sys.executable, *sys.argv, f"--loop_only={root}"],
            check=True,
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
        ).stdout.splitlines()[-1]
    )
    seconds = time.perf_counter() - start
    result["original_loop"] = loop | {"seconds": seconds, "clips_per_s": loop["clips"] / seconds}
    result["pipeline_vs_original"] = {
        name: run["clips_per_s"] / result["original_loop"]["clips_per_s"]
        for name, run in result["pipeline"].items()
    }
  print(json.dumps(result, indent=2))
  if args.json_out:
    pathlib.Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
