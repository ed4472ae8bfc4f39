"""What several benchmarks share: their synthetic input video and how they print results.

It imports no TensorFlow (`bench/original.py` does), so a benchmark that
does not run the original's kernels starts without it.
"""

import json

import numpy as np

from mmv_core.datasets import synthetic
from mmv_core.video import encode


def synthetic_jpegs(num_frames: int) -> list[bytes]:
  """A 320x240 synthetic video through the protocol's own ffmpeg re-encoding."""
  frames = synthetic.render_frames(
      0, 5, np.random.default_rng(0), width=320, height=240, num_frames=num_frames, fps=25.0
  )
  return encode.encode_jpeg_frames(synthetic.encode_avi(frames, 25.0), name="bench.avi")


def print_results(results: dict, json_out: str | None) -> None:
  """Prints a benchmark's results as JSON and writes them to `json_out` if given."""
  print(json.dumps(results, indent=2))
  if json_out:
    with open(json_out, "w") as f:
      json.dump(results, f, indent=2)
