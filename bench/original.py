"""The original evaluation's clip preparation, run as it ran: TensorFlow's kernels.

The baseline of the benchmarks, nothing else. The original decoded each
clip's JPEG frames with `tf.io.decode_jpeg`, flipped (training clips) with
`tf.reverse`, resized with `tf.image.resize` and cropped, one clip at a
time. `mmv_core.video` gives the same pixels without TensorFlow (its tests
compare them with these kernels); the benchmarks time both.

Importing this module imports TensorFlow with its start-up notices on
stderr dropped (they come through absl before `TF_CPP_MIN_LOG_LEVEL` is
read).
"""

import contextlib
import os
import sys
from typing import Sequence

import numpy as np

from mmv_core import video


@contextlib.contextmanager
def _stderr_to_devnull():
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w") as devnull:
      os.dup2(devnull.fileno(), 2)
      yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


with _stderr_to_devnull():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top


def decode(jpegs: Sequence[bytes], indices: Sequence[int]) -> np.ndarray:
  """uint8 [N, H, W, 3], the frames at `indices`, by TensorFlow's decoder."""
  return np.stack([tf.io.decode_jpeg(jpegs[i], channels=3).numpy() for i in indices])


def resize(frames: np.ndarray, min_resize: int) -> np.ndarray:
  """uint8 frames resized so the smaller side is `min_resize`, by `tf.image.resize`."""
  size = video.resized_size(*frames.shape[1:3], min_resize)
  if size == frames.shape[1:3]:
    return frames
  return tf.cast(tf.image.resize(frames, size), tf.uint8).numpy()


def flip_left_right(frames: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, 3] frames mirrored, by `tf.reverse`."""
  return tf.reverse(frames, axis=[2]).numpy()


def test_clip(jpegs: Sequence[bytes], indices: Sequence[int], size: int) -> np.ndarray:
  """uint8 [T, size, size, 3]: one test window decoded, resized, centrally cropped."""
  return video.central_crop(resize(decode(jpegs, indices), size), size)


def train_clip(
    jpegs: Sequence[bytes], indices: Sequence[int], size: int, rng: np.random.Generator
) -> np.ndarray:
  """uint8 [T, size, size, 3]: one training clip decoded, flipped with p=1/2, resized, cropped."""
  frames = decode(jpegs, indices)
  if rng.random() < 0.5:
    frames = flip_left_right(frames)
  return video.random_crop(resize(frames, size), size, rng)
