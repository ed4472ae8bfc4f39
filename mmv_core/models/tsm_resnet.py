"""TSM-ResNet-50 visual backbone (module path `.../TSMResNetV2`).

A pre-activation ResNet-50 run on every frame, with a temporal shift of part
of the channels inside each residual branch. Takes float32 clips
`[B, T, H, W, 3]` in [0, 1] and returns the mean over space and frames,
float32 `[B, 2048 * width_mult]`.
"""

import dataclasses

import haiku as hk
import jax
import jax.numpy as jnp

from mmv_core.models import convolution
from mmv_core.models import normalization

STEM_CHANNELS = 64
UNIT_CHANNELS = (256, 512, 1024, 2048)
UNIT_BLOCKS = (3, 4, 6, 3)
UNIT_STRIDES = (1, 2, 2, 2)
SHIFT_FRACTION = 1 / 8
# The kernels of each block whose output a BatchNorm normalises (paths within
# the block), for `normalization.fold_into_kernels`. The block's first
# BatchNorm acts on the block's input, which the shortcut also carries, so it
# stays.
KERNEL_TO_NORM = {
    "conv_0": normalization.MODULE_NAME + "_1",
    "conv_1": normalization.MODULE_NAME + "_2",
}


def output_dim(width_mult: int) -> int:
  """Size of the representation for a given width multiplier."""
  return UNIT_CHANNELS[-1] * width_mult


def temporal_shift(x: jax.Array, num_frames: int, fraction: float = SHIFT_FRACTION) -> jax.Array:
  """Shifts a fraction of the channels by one frame, forward and backward.

  With `n = int(C * fraction)`, per video: channels [C-n, C) take the next
  frame's values (zeros at the last frame), channels [0, n) take the previous
  frame's values (zeros at the first frame), and the output channels are
  ordered [next-frame part, untouched [n, C-n), previous-frame part], the
  layout the released weights were trained with.

  Args:
    x: float [B*T, H, W, C], the T frames of each video contiguous.
    num_frames: T.
    fraction: share of channels shifted in each direction.

  Returns:
    Array of the shape and dtype of `x`.
  """
  if x.shape[0] % num_frames:
    raise ValueError(
        f"temporal_shift: leading dim {x.shape[0]} is not a multiple of num_frames={num_frames}"
    )
  channels = x.shape[-1]
  n = int(channels * fraction)
  if n == 0:
    return x
  videos = jnp.reshape(x, (-1, num_frames) + x.shape[1:])
  no_time_pad = [(0, 0)] * (videos.ndim - 2)
  from_next = jnp.pad(videos[:, 1:, ..., channels - n :], [(0, 0), (0, 1)] + no_time_pad)
  from_previous = jnp.pad(videos[:, :-1, ..., :n], [(0, 0), (1, 0)] + no_time_pad)
  shifted = jnp.concatenate([from_next, videos[..., n : channels - n], from_previous], axis=-1)
  return jnp.reshape(shifted, x.shape)


def temporal_shift_in_place(
    x: jax.Array, num_frames: int, fraction: float = SHIFT_FRACTION
) -> jax.Array:
  """`temporal_shift` with every channel kept at its index.

  Channels [0, n) take the previous frame's values, [C-n, C) the next
  frame's, the rest stay: `temporal_shift`'s values, its channel blocks in
  the input's order. A kernel that reads this instead must have its input
  rows permuted (`ShiftedPointwise`). One elementwise pass, about three
  times faster than `temporal_shift`'s concatenation on XLA's CPU backend.

  Args:
    x: float [B*T, H, W, C], the T frames of each video contiguous.
    num_frames: T.
    fraction: share of channels shifted in each direction.
  """
  channels = x.shape[-1]
  n = int(channels * fraction)
  videos = jnp.reshape(x, (-1, num_frames) + x.shape[1:])
  no_time_pad = [(0, 0)] * (videos.ndim - 2)
  from_previous = jnp.pad(videos[:, :-1], [(0, 0), (1, 0)] + no_time_pad)
  from_next = jnp.pad(videos[:, 1:], [(0, 0), (0, 1)] + no_time_pad)
  channel = jnp.arange(channels)
  shifted = jnp.where(
      channel < n, from_previous, jnp.where(channel >= channels - n, from_next, videos)
  )
  return jnp.reshape(shifted, x.shape)


@dataclasses.dataclass(frozen=True)
class Layers:
  """How a TSM-ResNet's layers compute (one formulation of the same weights).

  Attributes:
    normalize_fn: the BatchNorms on each block's input and on the output.
    conv_normalize_fn: the BatchNorms after `conv_0` and `conv_1`
      (`KERNEL_TO_NORM`): folded ones for parameters that went through
      `normalization.fold_into_kernels`, else `normalize_fn`.
    pointwise_as_dot: run 1x1 convolutions as matrix products
      (`convolution.Conv2D`).
    shift_in_place: shift with `temporal_shift_in_place` (`ShiftedPointwise`).
  """

  normalize_fn: normalization.NormalizeFn
  conv_normalize_fn: normalization.NormalizeFn
  pointwise_as_dot: bool = False
  shift_in_place: bool = False

  def conv(self, channels: int, kernel_size: int, stride: int = 1, *, name: str):
    return convolution.Conv2D(channels, kernel_size, stride, self.pointwise_as_dot, name=name)


class ShiftedPointwise(hk.Module):
  """A 1x1 kernel (stored as `hk.Conv2D` stores it) on the temporally shifted input.

  `conv(temporal_shift(x))`; with `layers.shift_in_place`, the same sums as
  `conv(temporal_shift_in_place(x))` with the kernel's input rows permuted
  to the channels' places. Maps float32 [B*T, H, W, C_in] to
  [B*T, H, W, channels].
  """

  def __init__(self, channels: int, num_frames: int, layers: Layers, name: str):
    super().__init__(name=name)
    self._channels = channels
    self._num_frames = num_frames
    self._layers = layers

  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    w = convolution.kernel((1, 1), c, self._channels, x.dtype)
    if self._layers.shift_in_place:
      n = int(c * SHIFT_FRACTION)
      # temporal_shift's channel j reads in-place channel j + C-n (j < n), j,
      # or j - (C-n) (j >= C-n): row j of the kernel moves there.
      w = jnp.concatenate([w[:, :, c - n :], w[:, :, n : c - n], w[:, :, :n]], axis=2)
      x = temporal_shift_in_place(x, self._num_frames)
    else:
      x = temporal_shift(x, self._num_frames)
    if self._layers.pointwise_as_dot:
      return convolution.pointwise(x, w, (1, 1))
    return convolution.conv(x, w, (1, 1))


class TSMBlock(hk.Module):
  """Pre-activation bottleneck block with a temporal shift in the residual.

  preact = relu(BN(x)); shortcut = 1x1 conv of preact (projection) or x;
  residual = conv_2(relu(BN(conv_1(relu(BN(conv_0(shift(preact)))))))).
  The stride sits on `conv_1` (3x3) and on the projection.
  """

  def __init__(
      self,
      channels: int,
      stride: int,
      use_projection: bool,
      num_frames: int,
      layers: Layers,
      name: str,
  ):
    super().__init__(name=name)
    self._channels = channels
    self._stride = stride
    self._use_projection = use_projection
    self._num_frames = num_frames
    self._layers = layers

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """float32 [B*T, H, W, C_in] -> [B*T, H/stride, W/stride, channels]."""
    layers = self._layers
    bottleneck = self._channels // 4
    preact = jax.nn.relu(layers.normalize_fn(x, is_training))
    if self._use_projection:
      shortcut = layers.conv(self._channels, 1, self._stride, name="shortcut_conv")(preact)
    else:
      shortcut = x
    residual = ShiftedPointwise(bottleneck, self._num_frames, layers, name="conv_0")(preact)
    residual = jax.nn.relu(layers.conv_normalize_fn(residual, is_training))
    residual = layers.conv(bottleneck, 3, self._stride, name="conv_1")(residual)
    residual = jax.nn.relu(layers.conv_normalize_fn(residual, is_training))
    residual = layers.conv(self._channels, 1, name="conv_2")(residual)
    return shortcut + residual


class _Unit(hk.Module):
  """Blocks sharing an output width; the first one strides and projects."""

  def __init__(
      self,
      channels: int,
      num_blocks: int,
      stride: int,
      num_frames: int,
      layers: Layers,
      name: str,
  ):
    super().__init__(name=name)
    self._channels = channels
    self._num_blocks = num_blocks
    self._stride = stride
    self._num_frames = num_frames
    self._layers = layers

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    for i in range(self._num_blocks):
      x = TSMBlock(
          self._channels,
          self._stride if i == 0 else 1,
          i == 0,
          self._num_frames,
          self._layers,
          name=f"block_{i}",
      )(x, is_training)
    return x


class TSMResNetV2(hk.Module):
  """TSM-ResNet-50 (V2), width 1 or 2, as in the released MMV checkpoints."""

  def __init__(self, layers: Layers, width_mult: int = 1, name: str = "TSMResNetV2"):
    super().__init__(name=name)
    self._layers = layers
    self._width_mult = width_mult

  def __call__(self, clips: jax.Array, is_training: bool) -> jax.Array:
    """float32 [B, T, H, W, 3] in [0, 1] -> float32 [B, 2048 * width_mult]."""
    batch, num_frames = clips.shape[:2]
    x = jnp.reshape(clips, (batch * num_frames,) + clips.shape[2:])
    x = self._layers.conv(STEM_CHANNELS * self._width_mult, 7, 2, name="tsm_resnet_stem")(x)
    x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
    for i, (channels, num_blocks, stride) in enumerate(
        zip(UNIT_CHANNELS, UNIT_BLOCKS, UNIT_STRIDES)
    ):
      x = _Unit(
          channels * self._width_mult,
          num_blocks,
          stride,
          num_frames,
          self._layers,
          name=f"tsm_resnet_unit_{i}",
      )(x, is_training)
    x = jax.nn.relu(self._layers.normalize_fn(x, is_training))
    per_frame = jnp.mean(x, axis=(1, 2))
    return jnp.mean(jnp.reshape(per_frame, (batch, num_frames, -1)), axis=1)
