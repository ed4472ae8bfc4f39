"""Throughput of MMV feature extraction: batched `VideoEmbedder` vs the original loop.

For each backbone, on random weights in the checkpoint's shapes and on one
synthetic video of 320x240 JPEG frames (the cache's format), it times:
- `original`: the original evaluation's way: for every clip, decode the
  video's frames again, build the clip, run the model (reference
  formulation) on that one clip;
- `one_clip`: `VideoEmbedder` with batch size 1 on ready clips (model only),
  in the reference formulation, the layers as the original ran them;
- `batched`: `VideoEmbedder.embed_clips` with `--batch_size` on ready clips;
- `pipeline_path`: what a worker of `pipelines.embed` does per video: decode
  each frame once (`clips_from_jpegs`), then batched embedding.
It reports clips/s, model GFLOP/s (FLOPs from XLA's cost analysis, checked
against docs/models.md) and, with `--peak_tflops`, model FLOP utilisation.

    python bench/embed_bench.py                       # CPU, all backbones, 32x224x224
    python bench/embed_bench.py --backbones s3d --num_clips 4 --size 112
"""

import argparse
import os
import platform
import time

import jax
import numpy as np

from bench import original
from bench.shared import print_results, synthetic_jpegs
from mmv_core import checkpoints
from mmv_core import video
from mmv_core.embedder import VideoEmbedder
from mmv_core.embedder_config import PRECISIONS, EmbedderConfig
from mmv_core.models import mmv


def _timed(fn, repeats: int = 1) -> float:
  fn()  # Compile and warm up.
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def bench_backbone(backbone: str, args, jpegs: list[bytes]) -> dict:
  params, state = checkpoints.random_trees(*checkpoints.checkpoint_shapes(backbone), seed=0)
  clip_kwargs = dict(
      num_frames=args.num_frames, stride=2, min_resize=args.size, crop_size=args.size
  )
  n = args.num_clips
  batched = VideoEmbedder(params, state, backbone, EmbedderConfig(args.batch_size, args.precision))
  single = VideoEmbedder(
      params, state, backbone, EmbedderConfig(1, args.precision, formulation="reference")
  )
  train, test = video.clips_from_jpegs(
      jpegs, num_train_clips=n // 2, num_test_windows=n - n // 2, seed=0, **clip_kwargs
  )
  clips = np.concatenate([train, test])

  def original_loop():
    # One clip at a time, its frames decoded again for every clip, as the original loop did.
    for window in video.test_window_indices(len(jpegs), args.num_frames, 2, n):
      single.embed_clips(original.test_clip(jpegs, window, args.size)[None])

  def pipeline_path():
    tr, te = video.clips_from_jpegs(
        jpegs, num_train_clips=n // 2, num_test_windows=n - n // 2, seed=0, **clip_kwargs
    )
    batched.embed_clips(np.concatenate([tr, te]))

  flops = mmv.vid_repr_flops(backbone, args.num_frames, args.size)
  seconds = {
      "original": _timed(original_loop),
      "one_clip": _timed(lambda: single.embed_clips(clips)),
      "batched": _timed(lambda: batched.embed_clips(clips)),
      "pipeline_path": _timed(pipeline_path),
  }
  model_s = seconds["batched"]
  result = {
      "backbone": backbone,
      "clips": n,
      "batch_size": args.batch_size,
      "precision": args.precision,
      "clip_shape": [args.num_frames, args.size, args.size, 3],
      "gflops_per_clip_xla": flops / 1e9,
      "clips_per_s": {k: n / v for k, v in seconds.items()},
      "batched_vs_original": seconds["original"] / seconds["pipeline_path"],
      "model_gflops_per_s": flops * n / model_s / 1e9,
  }
  if args.num_frames == 32 and args.size == 224:
    result["gflops_per_clip_spec"] = mmv.SPEC_GFLOPS[backbone]
  if args.peak_tflops:
    result["model_flop_utilisation"] = flops * n / model_s / (args.peak_tflops * 1e12)
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--backbones", default=",".join(mmv.BACKBONES))
  parser.add_argument("--num_clips", type=int, default=4)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--num_frames", type=int, default=32)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--precision", choices=PRECISIONS, default="float32")
  parser.add_argument(
      "--peak_tflops",
      type=float,
      default=None,
      help="the device's peak TFLOP/s in --precision, for FLOP utilisation",
  )
  parser.add_argument("--json_out", default=None)
  args = parser.parse_args()

  jpegs = synthetic_jpegs(175)  # 7 s at 25 fps, UCF101's mean length.
  results = {
      "devices": [d.device_kind for d in jax.local_devices()],
      "host": f"{platform.machine()}, {os.cpu_count()} CPUs",
      "backbones": [bench_backbone(b, args, jpegs) for b in args.backbones.split(",")],
  }
  print_results(results, args.json_out)


if __name__ == "__main__":
  main()
