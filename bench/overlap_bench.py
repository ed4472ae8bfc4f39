"""Does the embedding step overlap host preparation with device compute?

Runs `pipelines.embed.EmbedClips` on the in-process runner with stand-ins of
known cost: a model handler that sleeps `--device_s` per batch (a host thread
waiting for a GPU holds no GIL either) and a sampler that sleeps `--host_s`
per video, or with `--host real` cuts real clips from a synthetic video
(TensorFlow's JPEG decoding and resizing, as the job does). Each video gives
one batch of clips. It prints the host-only time (the sampler alone, video
after video), the device-only time (the handler alone, batch after batch),
their sum and max, and the job's time with `--prefetch_videos` 0 (sampling
and inference one after the other) and 1 (sampling one video ahead), after
one warm-up job. With overlap the job's time approaches the max (plus the
first two videos' sampling: Beam's batching sends a full batch on only when
the next clip arrives), without it the sum.

    PYTHONPATH=. .venv/bin/python bench/overlap_bench.py
    PYTHONPATH=. .venv/bin/python bench/overlap_bench.py --host real --size 112
"""

import argparse
import dataclasses
import json
import pathlib
import pickle
import tempfile
import time
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions

from bench.shared import synthetic_jpegs
from mmv_core.models.names import VID_REPR
from mmv_core.video.video_cache import CachedVideo, IndexEntry, VideoRef
from pipelines import common
from pipelines import embed

IN_PROCESS = list(common.IN_PROCESS_RUNNER_ARGS)
HOST, DEVICE = "host", "device"


def record_event(events_path: str | None, kind: str, videos: Sequence[int], start: float) -> None:
  """Appends one {"kind", "videos", "start", "end"} JSON line (monotonic seconds)."""
  if events_path:
    event = {"kind": kind, "videos": sorted(videos), "start": start, "end": time.monotonic()}
    with open(events_path, "a") as f:
      f.write(json.dumps(event) + "\n")


def read_events(events_path: str) -> list[dict]:
  return [json.loads(line) for line in pathlib.Path(events_path).read_text().splitlines()]


def video_index(video_id: str) -> int:
  return int(video_id.rsplit("_c", 1)[1])


class SleepingSampler:
  """Clip sampling of a set cost: sleeps, then gives `num_train_clips` tiny clips.

  Each clip's pixels hold its video's index, so the model can tell which
  videos a batch came from.
  """

  def __init__(self, seconds_per_video: float, events_path: str | None = None):
    self._seconds = seconds_per_video
    self._events_path = events_path

  def __call__(self, ref: VideoRef, config: embed.EmbedJobConfig):
    start = time.monotonic()
    time.sleep(self._seconds)
    index = video_index(ref.video_id)
    record_event(self._events_path, HOST, [index], start)
    return [
        (
            embed.ClipKey(ref.video_id, 0, "bench", "train", i),
            np.full((1, 1, 1, 3), index, np.uint8),
        )
        for i in range(config.num_train_clips)
    ]


class RealSampler:
  """The job's own clip sampling, of every video on the frames pickled at `jpegs_path`.

  The frames are read in the worker: through `beam.Create` they would be
  pickled and compressed into the pipeline, seconds of the job's time.
  """

  def __init__(self, jpegs_path: str):
    self._jpegs_path = jpegs_path
    self._jpegs = None

  def __call__(self, ref: VideoRef, config: embed.EmbedJobConfig):
    if self._jpegs is None:
      self._jpegs = tuple(pickle.loads(pathlib.Path(self._jpegs_path).read_bytes()))
    return embed.cut_clips(CachedVideo(ref.video_id, 0, "Bench", self._jpegs, 0), config)


class SleepingHandler(ModelHandler[np.ndarray, dict, None]):
  """A device of a set cost: sleeps per batch of clips (any shape)."""

  def __init__(self, seconds_per_batch: float, batch_size: int, events_path: str | None = None):
    super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
    self._seconds = seconds_per_batch
    self._events_path = events_path

  def load_model(self) -> None:
    return None

  def run_inference(self, batch, model, inference_args=None):
    start = time.monotonic()
    time.sleep(self._seconds)
    record_event(self._events_path, DEVICE, {int(clip.flat[0]) for clip in batch}, start)
    return [PredictionResult(None, {VID_REPR: np.zeros(4, np.float32)}) for _ in batch]

  def get_num_bytes(self, batch) -> int:
    return sum(clip.nbytes for clip in batch)  # Beam's default pickles the whole batch.


def bench_videos(num_videos: int) -> list[VideoRef]:
  """References to no cached frames: the samplers bring their own."""
  nowhere = IndexEntry("", 0, "Bench", 0, 0, shard="")
  return [VideoRef(f"v_Bench_g01_c{i:02d}", 0, "Bench", nowhere) for i in range(num_videos)]


def run_job(
    videos: Sequence[VideoRef],
    config: embed.EmbedJobConfig,
    handler: ModelHandler,
    sample: embed.SampleFn,
) -> float:
  """Seconds of `EmbedClips` over `videos` on the in-process runner (building excluded)."""
  pipeline = beam.Pipeline(options=PipelineOptions(IN_PROCESS))
  _ = pipeline | beam.Create(videos, reshuffle=False) | embed.EmbedClips(config, handler, sample)
  start = time.perf_counter()
  pipeline.run().wait_until_finish()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--videos", type=int, default=12)
  parser.add_argument("--clips_per_video", type=int, default=8, help="also the batch size")
  parser.add_argument("--host", choices=("sleep", "real"), default="sleep")
  parser.add_argument("--host_s", type=float, default=0.3, help="per video, with --host sleep")
  parser.add_argument("--device_s", type=float, default=0.3, help="per batch")
  parser.add_argument("--num_frames", type=int, default=32, help="clip size, with --host real")
  parser.add_argument("--size", type=int, default=224, help="clip size, with --host real")
  parser.add_argument("--json_out", default=None)
  args = parser.parse_args()

  videos = bench_videos(args.videos)
  config = embed.EmbedJobConfig(
      checkpoint_path="",
      work_dir="",
      output_dir="",
      num_frames=args.num_frames,
      min_resize=args.size,
      crop_size=args.size,
      num_train_clips=args.clips_per_video,
      num_test_windows=0,
      batch_size=args.clips_per_video,
  )
  if args.host == "sleep":
    sample = SleepingSampler(args.host_s)
  else:
    jpegs_path = pathlib.Path(tempfile.mkdtemp(prefix="overlap_bench_")) / "jpegs.pkl"
    jpegs_path.write_bytes(pickle.dumps(synthetic_jpegs(175)))  # UCF101's mean length.
    sample = RealSampler(str(jpegs_path))
  handler = SleepingHandler(args.device_s, args.clips_per_video)

  start = time.perf_counter()
  batches = [[clip for _, clip in embed.sample_video(v, config, sample)] for v in videos]
  host_s = time.perf_counter() - start
  start = time.perf_counter()
  for batch in batches:
    handler.run_inference(batch, None)
  device_s = time.perf_counter() - start
  run_job(videos[:1], config, handler, sample)  # Beam's one-time costs, not the job's.
  job_s = {
      f"prefetch_videos={n}": run_job(
          videos, dataclasses.replace(config, prefetch_videos=n), handler, sample
      )
      for n in (0, 1)
  }
  result = {
      "videos": args.videos,
      "clips_per_batch": args.clips_per_video,
      "host": args.host,
      "host_only_s": host_s,
      "device_only_s": device_s,
      "sum_s": host_s + device_s,
      "max_s": max(host_s, device_s),
      "job_s": job_s,
  }
  print(json.dumps(result, indent=2))
  if args.json_out:
    pathlib.Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
