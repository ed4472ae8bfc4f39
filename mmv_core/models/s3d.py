"""S3D-G visual backbone (module path `.../S3D`), 1024-d clip representation.

Takes float32 clips `[B, T, H, W, 3]` in [0, 1] (T, H, W even), turns them into
the space-to-depth layout the released weights expect, and returns the mean
over time and space of the last Inception block, float32 `[B, 1024]`.
"""

import haiku as hk
import jax
import jax.numpy as jnp

from mmv_core.models import normalization

OUTPUT_DIM = 1024
# Separable spatio-temporal units use this temporal kernel from Conv2d_2c_3x3 on.
TEMPORAL_KERNEL = 3

# Inception channels (c0..c5): branch 0 1x1; branch 1 1x1 then 3x3x3;
# branch 2 1x1 then 3x3x3; branch 3 max pool then 1x1.
_INCEPTION_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

Triple = tuple[int, int, int]


def space_to_depth(video: jax.Array) -> jax.Array:
  """Folds 2x2x2 neighbourhoods into channels.

  Args:
    video: float [B, T, H, W, C] with T, H and W even.

  Returns:
    [B, T/2, H/2, W/2, 8C], channel index ((t * 2 + h) * 2 + w) * C + c for the
    offsets t, h, w in {0, 1} inside each neighbourhood.

  Raises:
    ValueError: if `video` is not 5-D or T, H or W is odd.
  """
  if video.ndim != 5:
    raise ValueError(f"space_to_depth expects [B, T, H, W, C], got shape {video.shape}")
  b, t, h, w, c = video.shape
  if t % 2 or h % 2 or w % 2:
    raise ValueError(f"space_to_depth needs even T, H and W, got T={t}, H={h}, W={w}")
  x = jnp.reshape(video, (b, t // 2, 2, h // 2, 2, w // 2, 2, c))
  x = jnp.transpose(x, (0, 1, 3, 5, 2, 4, 6, 7))
  return jnp.reshape(x, (b, t // 2, h // 2, w // 2, 8 * c))


def self_gating(x: jax.Array) -> jax.Array:
  """S3D-G feature gating of float [B, T, H, W, C]; adds Linear `self_gating`.

  Each channel is scaled by sigmoid(Linear(mean over T, H, W)).
  """
  context = jnp.mean(x, axis=(1, 2, 3))
  gates = jax.nn.sigmoid(hk.Linear(x.shape[-1], name="self_gating")(context))
  return x * gates[:, None, None, None, :]


def _max_pool(x: jax.Array, window: Triple, stride: Triple) -> jax.Array:
  return hk.max_pool(x, window_shape=(1, *window, 1), strides=(1, *stride, 1), padding="SAME")


class Unit3D(hk.Module):
  """Conv3D (no bias) + BN + ReLU, or two of them when separable; then gating.

  A separable unit with kernel (kt, k, k) and stride (st, s, s) is a spatial
  [1, k, k] / [1, s, s] unit (`conv3_d`) followed by a temporal [kt, 1, 1] /
  [st, 1, 1] unit (`conv3_d_1`). Maps float32 [B, T, H, W, C] to
  [B, T', H', W', channels] (SAME padding).

  Args (constructor):
    channels: output channels.
    kernel: (T, H, W) kernel.
    normalize_fn: adds the BatchNorm after each convolution.
    stride: (T, H, W) stride.
    separable: split into spatial and temporal convolutions as above.
    gated: apply `self_gating` after the last ReLU.
    name: haiku module name.
  """

  def __init__(
      self,
      channels: int,
      kernel: Triple,
      normalize_fn: normalization.NormalizeFn,
      *,
      stride: Triple = (1, 1, 1),
      separable: bool = False,
      gated: bool = False,
      name: str,
  ):
    super().__init__(name=name)
    if separable:
      shapes = [
          ((1, kernel[1], kernel[2]), (1, stride[1], stride[2])),
          ((kernel[0], 1, 1), (stride[0], 1, 1)),
      ]
    else:
      shapes = [(kernel, stride)]
    self._convs = [
        hk.Conv3D(channels, kernel_shape=k, stride=s, padding="SAME", with_bias=False)
        for k, s in shapes
    ]
    self._normalize_fn = normalize_fn
    self._gated = gated

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    for conv in self._convs:
      x = jax.nn.relu(self._normalize_fn(conv(x), is_training))
    return self_gating(x) if self._gated else x


class _InceptionBlock(hk.Module):
  """S3D-G Inception block; the four branches concatenated on channels."""

  def __init__(self, channels: tuple[int, ...], normalize_fn: normalization.NormalizeFn, name: str):
    super().__init__(name=name)
    self._channels = channels
    self._normalize_fn = normalize_fn

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    c0, c1, c2, c3, c4, c5 = self._channels
    norm = self._normalize_fn
    spatiotemporal = (TEMPORAL_KERNEL, 3, 3)
    branch_0 = Unit3D(c0, (1, 1, 1), norm, gated=True, name="Branch_0_Conv2d_0a_1x1")(
        x, is_training
    )
    branch_1 = Unit3D(c1, (1, 1, 1), norm, name="Branch_1_Conv2d_0a_1x1")(x, is_training)
    branch_1 = Unit3D(
        c2, spatiotemporal, norm, separable=True, gated=True, name="Branch_1_Conv2d_0b_3x3"
    )(branch_1, is_training)
    branch_2 = Unit3D(c3, (1, 1, 1), norm, name="Branch_2_Conv2d_0a_1x1")(x, is_training)
    branch_2 = Unit3D(
        c4, spatiotemporal, norm, separable=True, gated=True, name="Branch_2_Conv2d_0b_3x3"
    )(branch_2, is_training)
    branch_3 = _max_pool(x, (3, 3, 3), (1, 1, 1))
    branch_3 = Unit3D(c5, (1, 1, 1), norm, gated=True, name="Branch_3_Conv2d_0b_1x1")(
        branch_3, is_training
    )
    return jnp.concatenate([branch_0, branch_1, branch_2, branch_3], axis=-1)


class S3D(hk.Module):
  """S3D-G on space-to-depth input, as in the released MMV checkpoints."""

  def __init__(self, normalize_fn: normalization.NormalizeFn, name: str = "S3D"):
    super().__init__(name=name)
    self._normalize_fn = normalize_fn

  def __call__(self, clips: jax.Array, is_training: bool) -> jax.Array:
    """float32 [B, T, H, W, 3] in [0, 1] (T, H, W even) -> float32 [B, 1024]."""
    norm = self._normalize_fn
    x = space_to_depth(clips)
    x = Unit3D(64, (2, 4, 4), norm, name="Conv2d_1a_7x7")(x, is_training)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    x = Unit3D(64, (1, 1, 1), norm, name="Conv2d_2b_1x1")(x, is_training)
    x = Unit3D(
        192, (TEMPORAL_KERNEL, 3, 3), norm, separable=True, gated=True, name="Conv2d_2c_3x3"
    )(x, is_training)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2))
    for name in ("Mixed_3b", "Mixed_3c"):
      x = _InceptionBlock(_INCEPTION_CHANNELS[name], norm, name=name)(x, is_training)
    x = _max_pool(x, (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = _InceptionBlock(_INCEPTION_CHANNELS[name], norm, name=name)(x, is_training)
    x = _max_pool(x, (2, 2, 2), (2, 2, 2))
    for name in ("Mixed_5b", "Mixed_5c"):
      x = _InceptionBlock(_INCEPTION_CHANNELS[name], norm, name=name)(x, is_training)
    return jnp.mean(x, axis=(1, 2, 3))
