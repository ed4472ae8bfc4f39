"""Audio backbone: ResNet-V2-50 on log-mel spectrograms (module `.../res_net_v2`).

Takes float32 spectrograms `[B, 96, 40, 1]` (frames x mel bins; any size works)
and returns the spatially averaged last block, float32 `[B, 2048]`.
"""

import haiku as hk
import jax
import jax.numpy as jnp

from mmv_core.models import normalization

OUTPUT_DIM = 2048
SPECTROGRAM_SHAPE = (96, 40, 1)
_STEM_CHANNELS = 64
_GROUP_CHANNELS = (256, 512, 1024, 2048)
_GROUP_BLOCKS = (3, 4, 6, 3)
_GROUP_STRIDES = (1, 2, 2, 2)


class _Bottleneck(hk.Module):
  """Pre-activation bottleneck: (BN, ReLU, conv) x 3 plus the shortcut.

  The projection shortcut, when used, reads the first pre-activation; the
  stride sits on the 3x3 `conv_1` and on the projection.
  """

  def __init__(
      self,
      channels: int,
      stride: int,
      use_projection: bool,
      normalize_fn: normalization.NormalizeFn,
      name: str,
  ):
    super().__init__(name=name)
    self._projection = (
        hk.Conv2D(channels, 1, stride=stride, with_bias=False, padding="SAME", name="shortcut_conv")
        if use_projection
        else None
    )
    self._convs = [
        hk.Conv2D(channels // 4, 1, with_bias=False, padding="SAME", name="conv_0"),
        hk.Conv2D(channels // 4, 3, stride=stride, with_bias=False, padding="SAME", name="conv_1"),
        hk.Conv2D(channels, 1, with_bias=False, padding="SAME", name="conv_2"),
    ]
    self._normalize_fn = normalize_fn

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    shortcut = x
    net = x
    for i, conv in enumerate(self._convs):
      net = jax.nn.relu(self._normalize_fn(net, is_training))
      if i == 0 and self._projection is not None:
        shortcut = self._projection(net)
      net = conv(net)
    return shortcut + net


class _BlockGroup(hk.Module):
  """Bottlenecks of one width; the first strides and projects if widths differ."""

  def __init__(
      self,
      channels: int,
      num_blocks: int,
      stride: int,
      normalize_fn: normalization.NormalizeFn,
      name: str,
  ):
    super().__init__(name=name)
    self._channels = channels
    self._num_blocks = num_blocks
    self._stride = stride
    self._normalize_fn = normalize_fn

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    for i in range(self._num_blocks):
      first = i == 0
      x = _Bottleneck(
          self._channels,
          self._stride if first else 1,
          first and x.shape[-1] != self._channels,
          self._normalize_fn,
          name=f"block_{i}",
      )(x, is_training)
    return x


class AudioResNetV2(hk.Module):
  """ResNet-V2-50 without classifier, as in the released MMV checkpoints."""

  def __init__(self, normalize_fn: normalization.NormalizeFn, name: str = "res_net_v2"):
    super().__init__(name=name)
    self._normalize_fn = normalize_fn
    self._initial_conv = hk.Conv2D(
        _STEM_CHANNELS, 7, stride=2, with_bias=False, padding="SAME", name="initial_conv"
    )
    self._groups = [
        _BlockGroup(channels, blocks, stride, normalize_fn, name=f"block_group_{i}")
        for i, (channels, blocks, stride) in enumerate(
            zip(_GROUP_CHANNELS, _GROUP_BLOCKS, _GROUP_STRIDES)
        )
    ]

  def __call__(self, spectrograms: jax.Array, is_training: bool) -> jax.Array:
    """float32 [B, frames, bins, 1] -> float32 [B, 2048]."""
    x = self._initial_conv(spectrograms)
    x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
    for group in self._groups:
      x = group(x, is_training)
    x = jax.nn.relu(self._normalize_fn(x, is_training))
    return jnp.mean(x, axis=(1, 2))
