"""Where TSM-ResNet-50's time goes: each kind of layer timed alone at its shapes in one clip.

Every layer of the network (one 32x224x224 clip, float32, batch 1) is run on
its own, jitted, at the shapes it has in the network, in the fastest
formulation on this machine (1x1 convolutions as matrix products, the shift
in place, BatchNorm folded where it can be) and, for the layers the
formulations change, also as the reference runs them. Times are summed by kind and set against the whole model's time
in the same run; what the sum misses is what XLA fuses or overlaps across
layers.

    .venv/bin/python bench/tsm_profile.py
"""

import argparse
import collections
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmv_core import checkpoints
from mmv_core.embedder import VideoEmbedder
from mmv_core.embedder_config import EmbedderConfig
from mmv_core.models import convolution
from mmv_core.models import tsm_resnet

_FRAMES, _SIZE = 32, 224


def _best_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - start)
  return best


def _layers(width: int):
  """(kind, function, reference function or None, input shape, weight shape or None), every layer."""
  n = _FRAMES
  conv = lambda stride: jax.jit(lambda x, w: convolution.conv(x, w, (stride, stride)))
  dot = lambda stride: jax.jit(lambda x, w: convolution.pointwise(x, w, (stride, stride)))
  # An evaluation-mode BatchNorm is x * multiplier + offset, per channel.
  norm_relu = jax.jit(lambda x, v: jax.nn.relu(x * v + v))
  bias_relu = jax.jit(lambda x, v: jax.nn.relu(x + v))
  shift = jax.jit(lambda x: tsm_resnet.temporal_shift_in_place(x, _FRAMES))
  reference_shift = jax.jit(lambda x: tsm_resnet.temporal_shift(x, _FRAMES))
  window = (1, 3, 3, 1), (1, 2, 2, 1)
  pool = jax.jit(lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, *window, "SAME"))
  stem = tsm_resnet.STEM_CHANNELS * width
  yield "stem 7x7 convolution", conv(2), None, (n, _SIZE, _SIZE, 3), (7, 7, 3, stem)
  yield "stem max pool", pool, None, (n, _SIZE // 2, _SIZE // 2, stem), None
  size, channels_in = _SIZE // 4, stem
  units = zip(tsm_resnet.UNIT_CHANNELS, tsm_resnet.UNIT_BLOCKS, tsm_resnet.UNIT_STRIDES)
  for channels, blocks, stride in units:
    channels *= width
    bottleneck = channels // 4
    for block in range(blocks):
      s = stride if block == 0 else 1
      out = size // s
      shape, mid, end = (n, size, size, channels_in), (n, size, size, bottleneck), (n, out, out)
      yield "input BatchNorm + ReLU", norm_relu, None, shape, (channels_in,)
      if block == 0:
        yield "1x1 convolution", dot(s), conv(s), shape, (1, 1, channels_in, channels)
      yield "temporal shift", shift, reference_shift, shape, None
      yield "1x1 convolution", dot(1), conv(1), shape, (1, 1, channels_in, bottleneck)
      yield "folded BatchNorm + ReLU", bias_relu, None, mid, (bottleneck,)
      yield f"3x3 convolution, stride {s}", conv(s), None, mid, (3, 3, bottleneck, bottleneck)
      yield "folded BatchNorm + ReLU", bias_relu, None, (*end, bottleneck), (bottleneck,)
      yield "1x1 convolution", dot(1), conv(1), (*end, bottleneck), (1, 1, bottleneck, channels)
      yield "residual sum", jax.jit(jnp.add), None, (*end, channels), (*end, channels)
      size, channels_in = out, channels


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], allow_abbrev=False)
  parser.add_argument(
      "--backbone", choices=("tsm_resnet_x1", "tsm_resnet_x2"), default="tsm_resnet_x1"
  )
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  width = 2 if args.backbone == "tsm_resnet_x2" else 1
  rng = np.random.default_rng(0)
  by_kind = collections.Counter()
  by_kind_reference = collections.Counter()
  with jax.default_matmul_precision("highest"):
    for kind, fn, reference_fn, shape, operand_shape in _layers(width):
      operands = [jnp.asarray(rng.random(shape, np.float32))]
      if operand_shape is not None:
        operands.append(jnp.asarray(rng.random(operand_shape, np.float32)))
      by_kind[kind] += _best_seconds(fn, *operands, repeats=args.repeats)
      if reference_fn is not None:
        by_kind_reference[kind] += _best_seconds(reference_fn, *operands, repeats=args.repeats)
  params, state = checkpoints.random_trees(*checkpoints.checkpoint_shapes(args.backbone), seed=0)
  clip = rng.integers(0, 256, (1, _FRAMES, _SIZE, _SIZE, 3), np.uint8)
  whole = {}
  for formulation in ("fastest", "reference"):
    config = EmbedderConfig(1, formulation=formulation)
    embedder = VideoEmbedder(params, state, args.backbone, config)
    whole[formulation] = _best_seconds(embedder.embed_clips, clip, repeats=args.repeats)
  total = sum(by_kind.values())
  print(
      f"{args.backbone}, one {_FRAMES}x{_SIZE}x{_SIZE} clip: whole model {whole['fastest']:.2f} s "
      f"(reference formulation {whole['reference']:.2f} s); its layers alone sum to {total:.2f} s"
  )
  for kind, seconds in by_kind.most_common():
    line = f"  {kind}: {seconds:.3f} s ({seconds / total:.0%})"
    if kind in by_kind_reference:
      line += f"; as the reference runs it {by_kind_reference[kind]:.3f} s"
    print(line)


if __name__ == "__main__":
  main()
