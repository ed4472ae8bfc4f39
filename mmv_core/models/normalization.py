"""Batch normalisation as the released MMV checkpoints store it.

Every BatchNorm in the MMV networks is a haiku module named
`__cross_replica_batch_norm` (haiku appends `_1`, `_2`, ... to repeats inside
one parent) with parameters `scale` and `offset` of shape `[1, ..., 1, C]` and
two moving averages `~/mean_ema` and `~/var_ema`, each with state `counter`
(int32 []), `hidden` and `average` (float32 `[1, ..., 1, C]`).

Unlike `hk.BatchNorm`, this module creates its moving-average state in
evaluation mode too, so an evaluation-mode `init` yields the full state tree a
checkpoint fills.
"""

from typing import Callable, Mapping

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

MODULE_NAME = "__cross_replica_batch_norm"
DECAY_RATE = 0.9
EPS = 1e-5

# `normalize(x, is_training)`: creates one new BatchNorm layer per call.
NormalizeFn = Callable[[jax.Array, bool], jax.Array]


class _MovingAverage(hk.ExponentialMovingAverage):
  """`hk.ExponentialMovingAverage` whose state can be created without an update."""

  def ensure_state(self, shape: tuple[int, ...], dtype: jnp.dtype, initial_average: float) -> None:
    """Creates the state if missing: no updates seen, average `initial_average`.

    With zero-debiasing the first update overwrites `average` with the observed
    value, so `initial_average` only matters for evaluation before any training
    (e.g. a randomly initialised model), where neutral statistics (mean 0,
    variance 1) keep activations finite.
    """
    hk.get_state("counter", (), jnp.int32, init=jnp.zeros)
    hk.get_state("hidden", shape, dtype, init=jnp.zeros)
    hk.get_state("average", shape, dtype, init=lambda s, d: jnp.full(s, initial_average, d))


class CrossReplicaBatchNorm(hk.Module):
  """BatchNorm over all axes but the last, optionally across devices.

  Evaluation: `y = (x - mean_ema.average) * scale * rsqrt(var_ema.average + eps)
  + offset`. Training: batch statistics (averaged over the named device axis
  when `axis_name` is given), and the moving averages are updated.
  """

  def __init__(self, axis_name: str | None = None, name: str = MODULE_NAME):
    """Creates the module.

    Args:
      axis_name: mapped axis (pmap/vmap/shard_map) to average batch statistics
        over in training; None uses the local batch only.
      name: haiku module name.
    """
    super().__init__(name=name)
    self._axis_name = axis_name
    self._mean_ema = _MovingAverage(DECAY_RATE, name="mean_ema")
    self._var_ema = _MovingAverage(DECAY_RATE, name="var_ema")

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """Normalises float32 `x` [..., C]; returns the same shape and dtype."""
    stats_shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
    scale = hk.get_parameter("scale", stats_shape, x.dtype, init=jnp.ones)
    offset = hk.get_parameter("offset", stats_shape, x.dtype, init=jnp.zeros)
    if is_training:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes, keepdims=True)
      mean_of_squares = jnp.mean(jnp.square(x), axes, keepdims=True)
      if self._axis_name is not None:
        mean = jax.lax.pmean(mean, self._axis_name)
        mean_of_squares = jax.lax.pmean(mean_of_squares, self._axis_name)
      var = mean_of_squares - jnp.square(mean)
      self._mean_ema(mean)
      self._var_ema(var)
    else:
      self._mean_ema.ensure_state(stats_shape, x.dtype, 0.0)
      self._var_ema.ensure_state(stats_shape, x.dtype, 1.0)
      mean = self._mean_ema.average
      var = self._var_ema.average
    return (x - mean) * (scale * jax.lax.rsqrt(var + EPS)) + offset


class FoldedBatchNorm(hk.Module):
  """An evaluation-mode BatchNorm whose scaling lives in the preceding kernel.

  Adds `offset` ([1, ..., 1, C]) only: `fold_into_kernels` multiplied the
  convolution's kernel by `scale * rsqrt(var + eps)` and set `offset` to
  `offset - mean * scale * rsqrt(var + eps)`, so `conv(x) + offset` equals the
  BatchNorm of `conv(x)` up to float32 rounding. Same module name as the
  BatchNorm it replaces, so the surrounding layers keep their names.
  """

  def __init__(self, name: str = MODULE_NAME):
    super().__init__(name=name)

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    if is_training:
      raise ValueError("a folded BatchNorm only evaluates; train with the checkpoint's own tree")
    stats_shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
    return x + hk.get_parameter("offset", stats_shape, x.dtype, init=jnp.zeros)


def fold_into_kernels(
    params: Mapping[str, Mapping],
    state: Mapping[str, Mapping],
    prefix: str,
    kernel_to_norm: Mapping[str, str],
) -> tuple[dict, dict]:
  """Folds evaluation-mode BatchNorms into the kernels they follow.

  Args:
    params: a params tree (module path -> {name: array}) as a checkpoint holds it.
    state: its state tree.
    prefix: only modules under this path are folded (one backbone).
    kernel_to_norm: the kernel module's path relative to its parent -> the
      BatchNorm's (relative to the same parent) that normalises its output,
      e.g. {"~/conv3_d": "__cross_replica_batch_norm"}.

  Returns:
    (params, state): each folded kernel `w` ([..., C_out]) scaled per output
    channel, its BatchNorm's params reduced to the folded `offset` that
    `FoldedBatchNorm` adds, and that BatchNorm's moving averages dropped.
    Computed in float64, stored in each leaf's own dtype.
  """
  params = {path: dict(leaves) for path, leaves in params.items()}
  state = dict(state)
  for kernel_path in [path for path in params if path.startswith(prefix)]:
    for kernel_name, norm_name in kernel_to_norm.items():
      if not kernel_path.endswith("/" + kernel_name):
        continue
      norm_path = kernel_path[: -len(kernel_name)] + norm_name
      mean = np.asarray(state.pop(norm_path + "/~/mean_ema")["average"], np.float64)
      var = np.asarray(state.pop(norm_path + "/~/var_ema")["average"], np.float64)
      norm = params[norm_path]
      multiplier = np.asarray(norm["scale"], np.float64) / np.sqrt(var + EPS)
      kernel = params[kernel_path]["w"]
      folded_kernel = np.asarray(kernel, np.float64) * multiplier.reshape(-1)
      folded_offset = np.asarray(norm["offset"], np.float64) - mean * multiplier
      params[kernel_path]["w"] = folded_kernel.astype(kernel.dtype)
      params[norm_path] = {"offset": folded_offset.astype(norm["offset"].dtype)}
  return params, state


def make_normalize_fn(axis_name: str | None = None) -> NormalizeFn:
  """Returns `normalize(x, is_training)` adding a new BatchNorm layer per call."""

  def normalize(x: jax.Array, is_training: bool) -> jax.Array:
    return CrossReplicaBatchNorm(axis_name=axis_name)(x, is_training)

  return normalize


def folded_normalize(x: jax.Array, is_training: bool) -> jax.Array:
  """The NormalizeFn of a BatchNorm folded into the preceding kernel (`FoldedBatchNorm`)."""
  return FoldedBatchNorm()(x, is_training)
