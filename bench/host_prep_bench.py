"""Host preparation of one video's clips: before this change, fast path, exact path.

One synthetic 320x240 video of 7 s at 25 fps (UCF101's mean length) through
the protocol's ffmpeg re-encoding, then what `pipelines.embed` does on the
host per video: decode its JPEG frames and cut 10 training clips and 10 test
windows of 32x224x224 (uint8, as they leave the host). Three ways:
- `before`: the algorithm as it was before `exact_train_clips` (copied below
  as `_Before`, input checks left out; the baseline only): each training
  clip flipped and resized on its own, test and training frames resized
  separately;
- `fast`: `video.clips_from_jpegs`, the default (`exact_train_clips=False`);
- `exact`: `video.clips_from_jpegs(..., exact_train_clips=True)`.
Everything runs on one thread (TensorFlow's intra- and inter-op pools, OMP,
OpenBLAS), so CPU time is time on one core; the figure is the fastest of
`--repeats` runs, in ms per clip, the three ways taking turns.

    PYTHONPATH=. .venv/bin/python bench/host_prep_bench.py
"""

import os

# Read by TensorFlow and the BLAS libraries when they load, so set first.
for _variable in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
):
  os.environ[_variable] = "1"

# pylint: disable=wrong-import-position
import argparse
import platform
import time
from typing import Callable, Sequence

import numpy as np

from bench import original
from bench.shared import print_results, synthetic_jpegs
from mmv_core import video


class _Before:
  """The clip builder as it was before this change; the baseline, nothing else."""

  @staticmethod
  def gatherer(jpegs: Sequence[bytes]) -> Callable[[np.ndarray], np.ndarray]:
    decoded = {}

    def gather(needed):
      missing = [int(i) for i in needed if int(i) not in decoded]
      if missing:
        decoded.update(zip(missing, original.decode(jpegs, missing)))
      return np.stack([decoded[int(i)] for i in needed])

    return gather

  @staticmethod
  def test_clips(gather, num_video_frames, num_windows, num_frames, stride, min_resize, crop_size):
    indices = video.test_window_indices(num_video_frames, num_frames, stride, num_windows)
    needed, positions = np.unique(indices, return_inverse=True)
    processed = video.central_crop(original.resize(gather(needed), min_resize), crop_size)
    return processed[positions.reshape(indices.shape)]

  @staticmethod
  def train_clips(
      gather, num_video_frames, num_clips, num_frames, stride, min_resize, crop_size, seed
  ):
    rng = np.random.default_rng(seed)
    indices = np.stack(
        [
            video.train_clip_indices(num_video_frames, num_frames, stride, rng)
            for _ in range(num_clips)
        ]
    )
    needed, positions = np.unique(indices, return_inverse=True)
    frames = gather(needed)
    clips = []
    for clip_positions in positions.reshape(indices.shape):
      clip = video.random_flip_left_right(frames[clip_positions], rng)
      clips.append(video.random_crop(original.resize(clip, min_resize), crop_size, rng))
    return np.stack(clips)

  @staticmethod
  def clips_from_jpegs(
      jpegs, *, num_train_clips, num_test_windows, num_frames, stride, min_resize, crop_size, seed
  ):
    gather = _Before.gatherer(jpegs)
    train = _Before.train_clips(
        gather, len(jpegs), num_train_clips, num_frames, stride, min_resize, crop_size, seed
    )
    test = _Before.test_clips(
        gather, len(jpegs), num_test_windows, num_frames, stride, min_resize, crop_size
    )
    return train, test


def _fastest(builders: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict]:
  """Per builder, the fastest CPU and wall seconds of `repeats` runs.

  The builders take turns, so that load from other processes on the
  machine falls on all of them alike.
  """
  cpu = {name: [] for name in builders}
  wall = {name: [] for name in builders}
  for _ in range(repeats):
    for name, build in builders.items():
      cpu_start, wall_start = time.process_time(), time.perf_counter()
      build()
      cpu[name].append(time.process_time() - cpu_start)
      wall[name].append(time.perf_counter() - wall_start)
  return {name: {"cpu_s": min(cpu[name]), "wall_s": min(wall[name])} for name in builders}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--num_train_clips", type=int, default=10)
  parser.add_argument("--num_test_windows", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--json_out", default=None)
  args = parser.parse_args()

  num_video_frames = 175  # 7 s at 25 fps, UCF101's mean length.
  jpegs = synthetic_jpegs(num_video_frames)
  clip_kwargs = dict(
      num_train_clips=args.num_train_clips,
      num_test_windows=args.num_test_windows,
      num_frames=32,
      stride=2,
      min_resize=224,
      crop_size=224,
      seed=0,
  )
  builders = {
      "before": lambda: _Before.clips_from_jpegs(jpegs, **clip_kwargs),
      "fast": lambda: video.clips_from_jpegs(jpegs, **clip_kwargs),
      "exact": lambda: video.clips_from_jpegs(jpegs, **clip_kwargs, exact_train_clips=True),
  }
  clips = {name: build() for name, build in builders.items()}  # Also the warm-up.
  num_clips = args.num_train_clips + args.num_test_windows
  modes = {
      name: {**seconds, "ms_per_clip_per_core": 1000 * seconds["cpu_s"] / num_clips}
      for name, seconds in _fastest(builders, args.repeats).items()
  }
  flipped_difference = np.abs(clips["fast"][0].astype(np.int16) - clips["exact"][0])
  results = {
      "host": f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
      f"{os.getloadavg()[0]:.1f}",
      "threads": 1,
      "video": {"frames": num_video_frames, "height": 240, "width": 320, "fps": 25},
      "clips": {
          "train": args.num_train_clips,
          "test": args.num_test_windows,
          "shape": [32, 224, 224, 3],
          "dtype": "uint8",
      },
      "modes": modes,
      "before_vs_fast": modes["before"]["cpu_s"] / modes["fast"]["cpu_s"],
      "test_windows_identical": all(
          np.array_equal(clips["before"][1], clips[name][1]) for name in ("fast", "exact")
      ),
      "exact_train_identical": np.array_equal(clips["before"][0], clips["exact"][0]),
      "fast_train_max_abs_difference": int(flipped_difference.max()),
  }
  print_results(results, args.json_out)


if __name__ == "__main__":
  main()
