"""The embedding job's clips/s against a loop written the original way, same run.

Both read the same video cache (filled first, not timed), use the same random
S3D-G checkpoint and cut the same clips:
- `pipeline`: `python -m pipelines.embed` on the local runner (multi-process,
  one worker per core), timed end to end, start-up included;
- `original_loop`: one process, one clip at a time, the clip's frames decoded
  again from JPEG for every clip, the model run on that one clip.

    python bench/embed_pipeline_bench.py                  # 8 videos, 16x112x112 clips
    python bench/embed_pipeline_bench.py --videos_per_class 4 --size 224 --num_frames 32
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from mmv_core import checkpoints
from mmv_core import synthetic
from mmv_core import video
from mmv_core import video_cache
from mmv_core.embedder import EmbedderConfig, VideoEmbedder
from mmv_core.models import mmv

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def original_loop(cached: list[video_cache.CachedVideo], embedder: VideoEmbedder,
                  args) -> int:
  """The original evaluation's loop; returns the number of clips embedded."""
  clips = 0
  for v in cached:
    windows = video.test_window_indices(len(v.frames), args.num_frames, 2, args.num_test_windows)
    for window in windows:
      frames = video.decode_jpeg_frames(v.frames, window)
      clip = video.central_crop(video.resize_frames(frames, args.size), args.size)
      embedder.embed_clips(clip[None])
      clips += 1
    for i in range(args.num_train_clips):
      clip = video.train_clips_from_jpegs(
          v.frames, num_clips=1, num_frames=args.num_frames, stride=2, min_resize=args.size,
          crop_size=args.size, seed=video.video_seed(v.video_id, i))
      embedder.embed_clips(clip)
      clips += 1
  return clips


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--classes", type=int, default=4)
  parser.add_argument("--videos_per_class", type=int, default=2)
  parser.add_argument("--num_frames", type=int, default=16)
  parser.add_argument("--size", type=int, default=112)
  parser.add_argument("--num_train_clips", type=int, default=4)
  parser.add_argument("--num_test_windows", type=int, default=4)
  parser.add_argument("--json_out", default=None)
  args = parser.parse_args()

  root = pathlib.Path(tempfile.mkdtemp(prefix="mmv_bench_"))
  data = synthetic.write_dataset(str(root / "data"), num_classes=args.classes,
                                 videos_per_class=args.videos_per_class, clips_per_group=1,
                                 duration_s=3.0)
  checkpoint = root / "mmv_s3d.pkl"
  checkpoints.write_random_checkpoint(checkpoint, *mmv.param_shapes("s3d"))
  flags = [f"--checkpoint_path={checkpoint}", f"--work_dir={root / 'work'}",
           f"--video_zip={data.video_zip}", f"--splits_zip={data.splits_zip}",
           f"--num_frames={args.num_frames}", f"--min_resize={args.size}",
           f"--crop_size={args.size}", f"--num_train_clips={args.num_train_clips}",
           f"--num_test_windows={args.num_test_windows}", "--batch_size=4"]
  run = lambda out: subprocess.run([sys.executable, "-m", "pipelines.embed", *flags,
                                    f"--output_dir={root / out}"], cwd=REPO_ROOT, check=True,
                                   capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  run("warmup")  # Fills the video cache: ingestion is not what is compared.

  start = time.perf_counter()
  run("timed")
  pipeline_s = time.perf_counter() - start
  counts = json.loads((root / "timed" / "run.json").read_text())["counts"]
  pipeline_clips = counts["clips_written_train"] + counts["clips_written_test"]

  cached = [v for shard in sorted((root / "work").rglob("*.tfrecord"))
            for v in video_cache.read_shard(str(shard))]
  params, state = checkpoints.random_trees(*mmv.param_shapes("s3d"))
  embedder = VideoEmbedder(params, state, "s3d", EmbedderConfig(batch_size=1))
  original_loop(cached[:1], embedder, args)  # Compile outside the timing, as the job's workers do not.
  start = time.perf_counter()
  loop_clips = original_loop(cached, embedder, args)
  loop_s = time.perf_counter() - start

  result = {
      "videos": len(cached), "clip_shape": [args.num_frames, args.size, args.size, 3],
      "cores": os.cpu_count(),
      "pipeline": {"clips": pipeline_clips, "seconds": pipeline_s,
                   "clips_per_s": pipeline_clips / pipeline_s},
      "original_loop": {"clips": loop_clips, "seconds": loop_s, "clips_per_s": loop_clips / loop_s},
  }
  result["pipeline_vs_original"] = (result["pipeline"]["clips_per_s"]
                                    / result["original_loop"]["clips_per_s"])
  print(json.dumps(result, indent=2))
  if args.json_out:
    pathlib.Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
