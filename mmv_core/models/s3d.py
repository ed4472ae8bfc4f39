"""S3D-G visual backbone (module path `.../S3D`), 1024-d clip representation.

Takes float32 clips `[B, T, H, W, 3]` in [0, 1] (T, H, W even), turns them into
the space-to-depth layout the released weights expect, and returns the mean
over time and space of the last Inception block, float32 `[B, 1024]`.
"""

import functools
from typing import Callable

import haiku as hk
import jax
import jax.numpy as jnp
from mmv_core.models import convolution
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

# Each Unit3D's kernels and the BatchNorms after them (paths within the unit),
# for `normalization.fold_into_kernels`.
KERNEL_TO_NORM = {
    "~/conv3_d": normalization.MODULE_NAME,
    "~/conv3_d_1": normalization.MODULE_NAME + "_1",
}


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


def max_pool(x: jax.Array, window: Triple, stride: Triple, decomposed: bool) -> jax.Array:
  """SAME max pooling of [B, T, H, W, C] over (T, H, W).

  With `decomposed`, one axis at a time: the same maxima (SAME padding is
  per axis), an order of magnitude faster on XLA's CPU backend.
  """
  if not decomposed:
    return hk.max_pool(x, window_shape=(1, *window, 1), strides=(1, *stride, 1), padding="SAME")
  for axis in range(3):
    if window[axis] > 1 or stride[axis] > 1:
      axis_window = [1] * 5
      axis_stride = [1] * 5
      axis_window[axis + 1] = window[axis]
      axis_stride[axis + 1] = stride[axis]
      x = hk.max_pool(x, window_shape=axis_window, strides=axis_stride, padding="SAME")
  return x


class Conv3D(hk.Module):
  """`hk.Conv3D(channels, kernel, stride, with_bias=False, padding="SAME")`.

  With `decomposed` and stride 1 in time, it runs on XLA's 2D convolutions,
  several times faster than its 3D ones on CPUs (docs/models.md): a kernel
  that spans only time ([kt, 1, 1]) as a [kt, 1] convolution over (T, H*W);
  a [1, 1, 1] kernel as `convolution.pointwise`; any other as a 2D
  convolution over the B*T frames whose input channels are the kt frames the
  kernel reaches, side by side. Maps float32 [B, T, H, W, C_in] to
  [B, T', H', W', channels].
  """

  def __init__(
      self, channels: int, kernel: Triple, stride: Triple, decomposed: bool, name: str = "conv3_d"
  ):
    super().__init__(name=name)
    self._channels = channels
    self._kernel = kernel
    self._stride = stride
    self._decomposed = decomposed

  def __call__(self, x: jax.Array) -> jax.Array:
    w = convolution.kernel(self._kernel, x.shape[-1], self._channels, x.dtype)
    (kt, kh, kw), (st, sh, sw) = self._kernel, self._stride
    if not self._decomposed or st != 1:
      return convolution.conv(x, w, self._stride)
    if self._kernel == (1, 1, 1):
      return convolution.pointwise(x, w, self._stride)
    b, t, h, width, c = x.shape
    if kh == kw == 1 and sh == sw == 1:
      pixels = jnp.reshape(x, (b, t, h * width, c))
      y = convolution.conv(pixels, w[:, 0], (1, 1))
      return jnp.reshape(y, (b, t, h, width, self._channels))
    if kt > 1:
      before = (kt - 1) // 2  # XLA's SAME padding.
      padded = jnp.pad(x, [(0, 0), (before, kt - 1 - before), (0, 0), (0, 0), (0, 0)])
      x = jnp.concatenate([padded[:, dt : dt + t] for dt in range(kt)], axis=-1)
    w = jnp.reshape(jnp.transpose(w, (1, 2, 0, 3, 4)), (kh, kw, kt * c, self._channels))
    y = convolution.conv(jnp.reshape(x, (b * t, h, width, kt * c)), w, (sh, sw))
    return jnp.reshape(y, (b, t, *y.shape[1:]))


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
    decomposed: see `Conv3D`.
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
      decomposed: bool = False,
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
    self._convs = [Conv3D(channels, k, s, decomposed) for k, s in shapes]
    self._normalize_fn = normalize_fn
    self._gated = gated

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    for conv in self._convs:
      x = jax.nn.relu(self._normalize_fn(conv(x), is_training))
    return self_gating(x) if self._gated else x


# `unit(channels, kernel, **options)`: a Unit3D with the backbone's normalisation and form.
UnitFactory = Callable[..., Unit3D]


class _InceptionBlock(hk.Module):
  """S3D-G Inception block; the four branches concatenated on channels."""

  def __init__(self, channels: tuple[int, ...], unit: UnitFactory, decomposed: bool, name: str):
    super().__init__(name=name)
    self._channels = channels
    self._unit = unit
    self._decomposed = decomposed

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    c0, c1, c2, c3, c4, c5 = self._channels
    unit = self._unit
    spatiotemporal = (TEMPORAL_KERNEL, 3, 3)
    branch_0 = unit(c0, (1, 1, 1), gated=True, name="Branch_0_Conv2d_0a_1x1")(x, is_training)
    branch_1 = unit(c1, (1, 1, 1), name="Branch_1_Conv2d_0a_1x1")(x, is_training)
    branch_1 = unit(c2, spatiotemporal, separable=True, gated=True, name="Branch_1_Conv2d_0b_3x3")(
        branch_1, is_training
    )
    branch_2 = unit(c3, (1, 1, 1), name="Branch_2_Conv2d_0a_1x1")(x, is_training)
    branch_2 = unit(c4, spatiotemporal, separable=True, gated=True, name="Branch_2_Conv2d_0b_3x3")(
        branch_2, is_training
    )
    branch_3 = max_pool(x, (3, 3, 3), (1, 1, 1), self._decomposed)
    branch_3 = unit(c5, (1, 1, 1), gated=True, name="Branch_3_Conv2d_0b_1x1")(branch_3, is_training)
    return jnp.concatenate([branch_0, branch_1, branch_2, branch_3], axis=-1)


class S3D(hk.Module):
  """S3D-G on space-to-depth input, as in the released MMV checkpoints."""

  def __init__(
      self, normalize_fn: normalization.NormalizeFn, decomposed: bool = False, name: str = "S3D"
  ):
    """Creates the module.

    Args:
      normalize_fn: the BatchNorm after every convolution (a folded one for
        parameters that went through `normalization.fold_into_kernels`).
      decomposed: run 3D convolutions and max pools in their faster
        equivalent forms on XLA's CPU backend (`Conv3D`, `max_pool`).
      name: haiku module name.
    """
    super().__init__(name=name)
    self._unit = functools.partial(Unit3D, normalize_fn=normalize_fn, decomposed=decomposed)
    self._decomposed = decomposed

  def __call__(self, clips: jax.Array, is_training: bool) -> jax.Array:
    """float32 [B, T, H, W, 3] in [0, 1] (T, H, W even) -> float32 [B, 1024]."""
    unit = self._unit
    pool = functools.partial(max_pool, decomposed=self._decomposed)
    block = functools.partial(_InceptionBlock, unit=unit, decomposed=self._decomposed)
    x = space_to_depth(clips)
    x = unit(64, (2, 4, 4), name="Conv2d_1a_7x7")(x, is_training)
    x = pool(x, (1, 3, 3), (1, 2, 2))
    x = unit(64, (1, 1, 1), name="Conv2d_2b_1x1")(x, is_training)
    x = unit(192, (TEMPORAL_KERNEL, 3, 3), separable=True, gated=True, name="Conv2d_2c_3x3")(
        x, is_training
    )
    x = pool(x, (1, 3, 3), (1, 2, 2))
    for name in ("Mixed_3b", "Mixed_3c"):
      x = block(_INCEPTION_CHANNELS[name], name=name)(x, is_training)
    x = pool(x, (3, 3, 3), (2, 2, 2))
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = block(_INCEPTION_CHANNELS[name], name=name)(x, is_training)
    x = pool(x, (2, 2, 2), (2, 2, 2))
    for name in ("Mixed_5b", "Mixed_5c"):
      x = block(_INCEPTION_CHANNELS[name], name=name)(x, is_training)
    return jnp.mean(x, axis=(1, 2, 3))
