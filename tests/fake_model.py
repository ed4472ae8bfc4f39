"""A stand-in for the MMV model, for tests of the embedding job's wiring.

`PixelStatsHandler` embeds each clip as statistics of its pixels: no JAX, no
checkpoint loaded onto a device, no compilation, and still finite
embeddings that differ between clips and tell dark clips from light ones.

    python tests/fake_model.py [--seconds_per_batch=S] [--dim=D] FLAGS

is `python -m pipelines.embed FLAGS` with this handler in place of the model
(the checkpoint is still read and checked before any work, as always), each
batch taking at least S seconds (to be caught midway), embeddings of D floats.
"""

import argparse
import pathlib
import sys
import time

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from mmv_core.models.names import VIDEO_OUTPUTS

DIM = 6
# The command line of the job with this handler: append the job's flags.
COMMAND = (sys.executable, str(pathlib.Path(__file__).resolve()))


def pixel_stats(clip: np.ndarray) -> np.ndarray:
  """uint8 [T, H, W, 3] -> float32 [DIM]: each channel's mean and standard deviation, / 255."""
  pixels = clip.reshape(-1, 3).astype(np.float32) / 255
  return np.concatenate([pixels.mean(0), pixels.std(0)])


class PixelStatsHandler(ModelHandler[np.ndarray, dict, None]):
  """Clips uint8 [T, H, W, 3] in, {output name: `pixel_stats(clip)`} out, for every output.

  With `dim` over `DIM`, the statistics repeat to `dim` floats: embeddings
  that weigh what a real backbone's do.
  """

  def __init__(self, batch_size: int = 4, seconds_per_batch: float = 0.0, dim: int = DIM):
    super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
    self._seconds_per_batch = seconds_per_batch
    self._dim = dim

  def load_model(self) -> None:
    return None

  def run_inference(self, batch, model, inference_args=None):
    time.sleep(self._seconds_per_batch)
    return [
        PredictionResult(
            None, dict.fromkeys(VIDEO_OUTPUTS, np.resize(pixel_stats(clip), self._dim))
        )
        for clip in batch
    ]

  def get_num_bytes(self, batch) -> int:
    return sum(clip.nbytes for clip in batch)  # Beam's default pickles the whole batch.


if __name__ == "__main__":
  # The imported module's class, not __main__'s, so that Beam pickles it by its real name.
  import fake_model
  from pipelines import common
  from pipelines import embed

  own_flags = argparse.ArgumentParser(add_help=False)
  own_flags.add_argument("--seconds_per_batch", type=float, default=0.0)
  own_flags.add_argument("--dim", type=int, default=DIM)
  own, job_argv = own_flags.parse_known_args()
  handler = fake_model.PixelStatsHandler(seconds_per_batch=own.seconds_per_batch, dim=own.dim)
  common.run_main(lambda argv: embed.main(argv, handler), embed.PROG, job_argv)
