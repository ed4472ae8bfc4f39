"""Tests of the MMV networks: checkpoint trees, architecture cost, numerics.

References here are written from docs/models.md in loop-style numpy, not by
calling the code under test. Sizes are small; nothing runs at 224x224.
"""

import functools
import dataclasses
import itertools
import json
import math
import pathlib

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.interpreters import partial_eval

from mmv_core import embedder
from mmv_core.checkpoints import validation
from mmv_core.models import mmv
from mmv_core.models import normalization
from mmv_core.models import s3d
from mmv_core.models import tsm_resnet

# XLA cost analysis of vid_repr for one 32x224x224 clip (docs/models.md).
_SMALL_CLIPS = (2, 8, 32, 32, 3)


def _manifest(backbone: str) -> dict:
  """The released checkpoint's manifest, which checkpoints are validated against."""
  return json.loads(pathlib.Path(validation.manifest_path(backbone)).read_text())


def _leaf_names(tree) -> set[str]:
  return {f"{module}:{name}" for module, leaves in tree.items() for name in leaves}


# --- numpy references ------------------------------------------------------


def _np_conv(x: np.ndarray, w: np.ndarray, strides: tuple[int, ...]) -> np.ndarray:
  """SAME convolution, x [B, *spatial, Cin], w [*kernel, Cin, Cout], float64."""
  spatial = x.shape[1:-1]
  kernel = w.shape[:-2]
  out_size = [math.ceil(n / s) for n, s in zip(spatial, strides)]
  pads = []
  for n, k, s, o in zip(spatial, kernel, strides, out_size):
    total = max((o - 1) * s + k - n, 0)
    pads.append((total // 2, total - total // 2))
  xp = np.pad(x.astype(np.float64), [(0, 0)] + pads + [(0, 0)])
  out = np.zeros((x.shape[0], *out_size, w.shape[-1]))
  for offset in itertools.product(*[range(k) for k in kernel]):
    window = tuple(slice(d, d + (o - 1) * s + 1, s) for d, o, s in zip(offset, out_size, strides))
    out += np.einsum("...c,cd->...d", xp[(slice(None),) + window], w[offset])
  return out


def _np_batch_norm_eval(x, scale, offset, mean, var, eps=1e-5):
  return (x - mean) * scale / np.sqrt(var + eps) + offset


def _np_temporal_shift(x: np.ndarray, num_frames: int) -> np.ndarray:
  """docs/models.md: [next-frame part of the last n, middle, previous-frame part of the first n]."""
  channels = x.shape[-1]
  n = int(channels / 8)
  out = np.zeros_like(x)
  for video in range(x.shape[0] // num_frames):
    for t in range(num_frames):
      row = video * num_frames + t
      for j in range(n):
        if t + 1 < num_frames:
          out[row, ..., j] = x[row + 1, ..., channels - n + j]
        if t > 0:
          out[row, ..., channels - n + j] = x[row - 1, ..., j]
      for c in range(n, channels - n):
        out[row, ..., c] = x[row, ..., c]
  return out


def _np_space_to_depth(video: np.ndarray) -> np.ndarray:
  b, t, h, w, c = video.shape
  out = np.zeros((b, t // 2, h // 2, w // 2, 8 * c), video.dtype)
  for ti, hi, wi in itertools.product(range(t), range(h), range(w)):
    depth = ((ti % 2) * 4 + (hi % 2) * 2 + (wi % 2)) * c
    out[:, ti // 2, hi // 2, wi // 2, depth : depth + c] = video[:, ti, hi, wi, :]
  return out


def _randomize(tree, seed: int):
  """Random values for a (params or state) tree, BatchNorm variances positive."""
  rng = np.random.default_rng(seed)
  out = {}
  for module, leaves in tree.items():
    out[module] = {}
    for name, leaf in leaves.items():
      shape = leaf.shape
      if name == "counter":
        value = np.zeros(shape, np.int32)
      elif name in ("w", "embeddings"):
        fan_in = max(1, math.prod(shape[:-1])) if name == "w" else 1
        value = rng.standard_normal(shape, np.float32) / np.float32(np.sqrt(fan_in))
      elif name == "scale" or module.endswith("var_ema"):
        value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
      else:
        value = (0.1 * rng.standard_normal(shape)).astype(np.float32)
      out[module][name] = jnp.asarray(value)
  return out


# --- tensor transforms --------------------------------------------------------


def test_space_to_depth_matches_reference():
  video = np.random.default_rng(0).random((2, 4, 6, 8, 3), dtype=np.float32)
  got = np.asarray(s3d.space_to_depth(jnp.asarray(video)))
  assert got.shape == (2, 2, 3, 4, 24)
  np.testing.assert_array_equal(got, _np_space_to_depth(video))


@pytest.mark.parametrize("shape", [(1, 3, 4, 4, 3), (1, 4, 5, 4, 3), (1, 4, 4, 7, 3)])
def test_space_to_depth_rejects_odd_sizes(shape):
  with pytest.raises(ValueError, match="even"):
    s3d.space_to_depth(jnp.zeros(shape))


@pytest.mark.parametrize("channels", [16, 24, 64])
def test_temporal_shift_matches_reference(channels):
  num_frames = 4
  x = np.random.default_rng(1).standard_normal((3 * num_frames, 2, 2, channels)).astype(np.float32)
  got = np.asarray(tsm_resnet.temporal_shift(jnp.asarray(x), num_frames))
  np.testing.assert_array_equal(got, _np_temporal_shift(x, num_frames))


def test_self_gating_matches_reference():
  x = np.random.default_rng(2).standard_normal((2, 3, 4, 4, 6)).astype(np.float32)
  gate = hk.transform(s3d.self_gating)
  params = _randomize(jax.eval_shape(gate.init, jax.random.PRNGKey(0), x), seed=3)
  got = gate.apply(params, None, x)
  w, b = params["self_gating"]["w"], params["self_gating"]["b"]
  logits = x.mean(axis=(1, 2, 3)) @ np.asarray(w, np.float64) + np.asarray(b)
  want = x / (1 + np.exp(-logits))[:, None, None, None, :]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --- BatchNorm ---------------------------------------------------------------


def _batch_norm(axis_name=None, is_training=False):
  return hk.transform_with_state(
      lambda x: normalization.CrossReplicaBatchNorm(axis_name)(x, is_training)
  )


def test_batch_norm_eval_init_creates_neutral_state():
  x = jnp.ones((2, 3, 5))
  _, state = _batch_norm().init(jax.random.PRNGKey(0), x)
  prefix = normalization.MODULE_NAME + "/~/"
  assert set(state) == {prefix + "mean_ema", prefix + "var_ema"}
  for ema, average in (("mean_ema", 0.0), ("var_ema", 1.0)):
    leaves = state[prefix + ema]
    assert leaves["counter"].dtype == jnp.int32 and leaves["counter"].shape == ()
    assert leaves["hidden"].shape == leaves["average"].shape == (1, 1, 5)
    np.testing.assert_array_equal(leaves["average"], average)


def test_batch_norm_eval_matches_formula():
  x = np.random.default_rng(4).standard_normal((4, 3, 7)).astype(np.float32)
  bn = _batch_norm()
  params, state = jax.eval_shape(bn.init, jax.random.PRNGKey(0), x)
  params, state = _randomize(params, 5), _randomize(state, 6)
  got, new_state = bn.apply(params, state, None, x)
  p = params[normalization.MODULE_NAME]
  mean = state[normalization.MODULE_NAME + "/~/mean_ema"]["average"]
  var = state[normalization.MODULE_NAME + "/~/var_ema"]["average"]
  want = _np_batch_norm_eval(x, *(np.asarray(a) for a in (p["scale"], p["offset"], mean, var)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  jax.tree_util.tree_map(np.testing.assert_array_equal, new_state, state)


def test_batch_norm_training_uses_batch_stats_and_updates_averages():
  x = np.random.default_rng(7).standard_normal((6, 4)).astype(np.float32) * 3 + 1
  bn = _batch_norm(is_training=True)
  params, state = bn.init(jax.random.PRNGKey(0), x)
  got, new_state = bn.apply(params, state, None, x)
  mean, var = x.mean(axis=0), x.var(axis=0)
  np.testing.assert_allclose(got, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
  ema_path = normalization.MODULE_NAME + "/~/mean_ema"
  # Zero-debiased: the average of updates with one same batch is its mean.
  np.testing.assert_allclose(new_state[ema_path]["average"][0], mean, rtol=1e-5, atol=1e-6)
  assert int(new_state[ema_path]["counter"]) == int(state[ema_path]["counter"]) + 1


def test_batch_norm_training_pools_statistics_across_replicas():
  x = np.random.default_rng(8).standard_normal((2, 5, 3)).astype(np.float32)
  bn = _batch_norm(axis_name="replica", is_training=True)
  params, state = jax.vmap(bn.init, (None, 0), axis_name="replica")(jax.random.PRNGKey(0), x)
  params, state = jax.tree_util.tree_map(lambda a: a[0], (params, state))
  got, _ = jax.vmap(bn.apply, (None, None, None, 0), axis_name="replica")(params, state, None, x)
  pooled = x.reshape(10, 3)
  want = (pooled - pooled.mean(0)) / np.sqrt(pooled.var(0) + 1e-5)
  np.testing.assert_allclose(np.asarray(got).reshape(10, 3), want, rtol=1e-4, atol=1e-5)


# --- building blocks vs numpy --------------------------------------------------


def _run_block(block_fn, x, seed):
  block = hk.transform_with_state(block_fn)
  params, state = jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
  params, state = _randomize(params, seed), _randomize(state, seed + 1)
  out, _ = block.apply(params, state, None, x)
  return np.asarray(out), params, state


def _bn_args(params, state, module):
  return tuple(
      np.asarray(a, np.float64)
      for a in (
          params[module]["scale"],
          params[module]["offset"],
          state[module + "/~/mean_ema"]["average"],
          state[module + "/~/var_ema"]["average"],
      )
  )


def test_s3d_stem_unit_matches_numpy():
  clip = np.random.default_rng(9).random((1, 4, 16, 12, 3), dtype=np.float32)
  x = np.asarray(s3d.space_to_depth(jnp.asarray(clip)))
  norm = normalization.make_normalize_fn()
  got, params, state = _run_block(
      lambda v: s3d.Unit3D(64, (2, 4, 4), norm, name="stem")(v, False), x, seed=10
  )
  bn = "stem/" + normalization.MODULE_NAME
  want = _np_conv(x, np.asarray(params["stem/~/conv3_d"]["w"], np.float64), (1, 1, 1))
  want = np.maximum(_np_batch_norm_eval(want, *_bn_args(params, state, bn)), 0)
  assert got.shape == (1, 2, 8, 6, 64)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _np_self_gating(x, params, module):
  w = np.asarray(params[f"{module}/self_gating"]["w"], np.float64)
  b = np.asarray(params[f"{module}/self_gating"]["b"], np.float64)
  logits = x.mean(axis=(1, 2, 3)) @ w + b
  return x / (1 + np.exp(-logits))[:, None, None, None, :]


def _np_max_pool_same(x, window):
  """Stride-1 SAME max pool of [B, T, H, W, C] over `window` (T, H, W)."""
  pads = [(0, 0)] + [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in window] + [(0, 0)]
  xp = np.pad(x, pads, constant_values=-np.inf)
  out = np.full(x.shape, -np.inf)
  for offset in itertools.product(*[range(k) for k in window]):
    out = np.maximum(
        out, xp[(slice(None),) + tuple(slice(d, d + n) for d, n in zip(offset, x.shape[1:4]))]
    )
  return out


@pytest.mark.parametrize("decomposed", [False, True])
def test_s3d_inception_block_matches_numpy(decomposed):
  """Branch structure, separable order, gating, pooling and concatenation order, in both forms."""
  channels = (3, 4, 5, 2, 3, 4)
  x = np.random.default_rng(13).standard_normal((1, 4, 5, 5, 6)).astype(np.float32)
  make_unit = functools.partial(
      s3d.Unit3D, normalize_fn=normalization.make_normalize_fn(), decomposed=decomposed
  )
  got, params, state = _run_block(
      lambda v: s3d._InceptionBlock(channels, make_unit, decomposed, name="mix")(v, False),
      x,
      seed=14,
  )

  def unit(v, module, gated, separable=False):
    convs = ["conv3_d", "conv3_d_1"] if separable else ["conv3_d"]
    for i, conv in enumerate(convs):
      bn = f"mix/{module}/{normalization.MODULE_NAME}{'_1' if i else ''}"
      v = _np_conv(v, np.asarray(params[f"mix/{module}/~/{conv}"]["w"], np.float64), (1, 1, 1))
      v = np.maximum(_np_batch_norm_eval(v, *_bn_args(params, state, bn)), 0)
    return _np_self_gating(v, params, f"mix/{module}") if gated else v

  want = np.concatenate(
      [
          unit(x, "Branch_0_Conv2d_0a_1x1", gated=True),
          unit(
              unit(x, "Branch_1_Conv2d_0a_1x1", gated=False),
              "Branch_1_Conv2d_0b_3x3",
              gated=True,
              separable=True,
          ),
          unit(
              unit(x, "Branch_2_Conv2d_0a_1x1", gated=False),
              "Branch_2_Conv2d_0b_3x3",
              gated=True,
              separable=True,
          ),
          unit(
              _np_max_pool_same(x.astype(np.float64), (3, 3, 3)),
              "Branch_3_Conv2d_0b_1x1",
              gated=True,
          ),
      ],
      axis=-1,
  )
  assert got.shape == (1, 4, 5, 5, channels[0] + channels[2] + channels[4] + channels[5])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("fast", [False, True])
def test_tsm_first_block_matches_numpy(fast):
  num_frames, channels, stride = 3, 32, 2
  x = np.random.default_rng(11).standard_normal((2 * num_frames, 6, 6, 16)).astype(np.float32)
  norm = normalization.make_normalize_fn()
  layers = tsm_resnet.Layers(norm, norm, pointwise_as_dot=fast, shift_in_place=fast)
  got, params, state = _run_block(
      lambda v: tsm_resnet.TSMBlock(channels, stride, True, num_frames, layers, name="b")(v, False),
      x,
      seed=12,
  )
  bns = [f"b/{normalization.MODULE_NAME}{suffix}" for suffix in ("", "_1", "_2")]
  w = {
      name: np.asarray(params[f"b/{name}"]["w"], np.float64)
      for name in ("shortcut_conv", "conv_0", "conv_1", "conv_2")
  }
  preact = np.maximum(_np_batch_norm_eval(x, *_bn_args(params, state, bns[0])), 0)
  shortcut = _np_conv(preact, w["shortcut_conv"], (stride, stride))
  r = _np_conv(_np_temporal_shift(preact, num_frames), w["conv_0"], (1, 1))
  r = np.maximum(_np_batch_norm_eval(r, *_bn_args(params, state, bns[1])), 0)
  r = _np_conv(r, w["conv_1"], (stride, stride))
  r = np.maximum(_np_batch_norm_eval(r, *_bn_args(params, state, bns[2])), 0)
  want = shortcut + _np_conv(r, w["conv_2"], (1, 1))
  assert got.shape == (2 * num_frames, 3, 3, channels)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- whole model ---------------------------------------------------------------


@pytest.mark.parametrize("backbone", mmv.BACKBONES)
def test_param_tree_matches_checkpoint_manifest(backbone):
  manifest = _manifest(backbone)
  ours = dict(zip(("params", "state"), mmv.param_shapes(backbone)))
  for kind, tree in ours.items():
    want = {
        f"{m}:{n}": (tuple(v["shape"]), v["dtype"])
        for m, leaves in manifest[kind].items()
        for n, v in leaves.items()
    }
    got = {
        f"{m}:{n}": (tuple(v.shape), str(v.dtype))
        for m, leaves in tree.items()
        for n, v in leaves.items()
    }
    diff = sorted(
        f"{path}: manifest {want.get(path)} ours {got.get(path)}"
        for path in want.keys() | got.keys()
        if want.get(path) != got.get(path)
    )
    assert not diff, f"{backbone} {kind} differ:\n" + "\n".join(diff)


@pytest.mark.parametrize("backbone", mmv.BACKBONES)
def test_vid_repr_reads_exactly_the_manifest_leaves(backbone):
  expected = _manifest(backbone)["eval_used"]["vid_repr"]
  params, state = mmv.param_shapes(backbone)
  clips = jnp.zeros((1, 8, 32, 32, 3))
  vid_repr = lambda p, s: mmv.video_embeddings(p, s, clips, backbone=backbone)[mmv.VID_REPR]
  closed = jax.make_jaxpr(vid_repr)(params, state)
  _, used = partial_eval.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path((params, state))[0]]
  assert len(paths) == len(used)
  got = {"params": set(), "state": set()}
  for path, is_used in zip(paths, used):
    if is_used:
      got["params" if path[0].idx == 0 else "state"].add(f"{path[1].key}:{path[2].key}")
  for kind in ("params", "state"):
    assert got[kind] == set(expected[kind]), (
        f"{kind}: missing {sorted(set(expected[kind]) - got[kind])}, "
        f"extra {sorted(got[kind] - set(expected[kind]))}"
    )


@pytest.mark.parametrize("backbone", mmv.BACKBONES)
def test_vid_repr_flops_match_spec(backbone):
  gflops = mmv.vid_repr_flops(backbone, num_frames=32, size=224) / 1e9
  assert gflops == pytest.approx(mmv.SPEC_GFLOPS[backbone], rel=0.005)


@functools.cache
def _jitted_video_embeddings(backbone: str, formulation: mmv.Formulation = mmv.REFERENCE):
  """One compiled program per backbone and formulation, shared by the tests."""
  return jax.jit(
      functools.partial(mmv.video_embeddings, backbone=backbone, formulation=formulation)
  )


@functools.cache
def _random_video_model(backbone: str):
  """Random (params, state) of the subtrees video embeddings read.

  The audio and text towers are three quarters of the model's weights, and
  drawing them took most of each video test's time.
  """
  params, state = (embedder.video_subtree(tree) for tree in validation.checkpoint_shapes(backbone))
  return _randomize(params, 20), _randomize(state, 21)


def _np_video_heads(params, state, vid_repr):
  """'fac_relu': video->audio mlp@512 with BN after; video->text on its ReLU, BN after."""
  heads = f"{mmv.MODEL_NAME}/~_get_pair_embedding_heads/"
  bn = normalization.MODULE_NAME
  p = lambda module, name: np.asarray(params[heads + module][name], np.float64)
  h = vid_repr @ p("vid2audio_embd/final_projection_inner", "w")
  h += p("vid2audio_embd/final_projection_inner", "b")
  h = _np_batch_norm_eval(h, *_bn_args(params, state, heads + "vid2audio_embd/" + bn))
  h = np.maximum(h, 0)
  video_audio = _np_batch_norm_eval(
      h @ p("vid2audio_embd/final_projection", "w"),
      *_bn_args(params, state, heads + f"vid2audio_embd/{bn}_1"),
  )
  t = np.maximum(video_audio, 0) @ p("vis_embd/final_projection", "w")
  t += p("vis_embd/final_projection", "b")
  video_text = _np_batch_norm_eval(t, *_bn_args(params, state, heads + "vis_embd/" + bn))
  return video_audio, video_text


# TSM-ResNet-50x2 is the x1 model at twice the width: its tree is checked
# against the release's manifest and its cost compiled (tests above).
@pytest.mark.parametrize("backbone", ["s3d", "tsm_resnet_x1"])
def test_video_embeddings_shapes_heads_under_jit(backbone):
  params, state = _random_video_model(backbone)
  clips = jax.random.uniform(jax.random.PRNGKey(1), _SMALL_CLIPS)
  embed = _jitted_video_embeddings(backbone)
  out = embed(params, state, clips)
  expected = {mmv.VID_REPR: mmv.REPR_DIMS[backbone], mmv.VIDEO_AUDIO: 512, mmv.VIDEO_TEXT: 256}
  assert {k: v.shape for k, v in out.items()} == {k: (2, d) for k, d in expected.items()}
  for key, value in out.items():
    assert value.dtype == jnp.float32, key
    assert bool(jnp.all(jnp.isfinite(value))), key
  assert not np.allclose(out[mmv.VID_REPR][0], out[mmv.VID_REPR][1])
  video_audio, video_text = _np_video_heads(params, state, np.asarray(out[mmv.VID_REPR]))
  np.testing.assert_allclose(out[mmv.VIDEO_AUDIO], video_audio, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out[mmv.VIDEO_TEXT], video_text, rtol=1e-4, atol=1e-5)
  if backbone == "tsm_resnet_x1":
    # Frames of one clip must never mix with another clip's (temporal shift).
    alone = embed(params, state, clips[1:])
    np.testing.assert_allclose(alone[mmv.VID_REPR][0], out[mmv.VID_REPR][1], rtol=1e-5, atol=1e-6)


# TSM-ResNet-50x2 is the x1 model at twice the width: the tree test covers its fold.
@pytest.mark.parametrize("backbone", ["s3d", "tsm_resnet_x1"])
def test_fast_formulations_give_the_reference_features(backbone):
  params, state = _random_video_model(backbone)
  clips = jax.random.uniform(jax.random.PRNGKey(1), _SMALL_CLIPS)
  formulations = {mmv.fastest_formulation(platform) for platform in ("cpu", "gpu")}
  if backbone != "s3d":  # TSM-ResNet has no 3D operations to decompose.
    formulations = {dataclasses.replace(f, decompose_3d=False) for f in formulations}
  else:  # S3D-G reads neither of TSM-ResNet's settings.
    formulations = {
        dataclasses.replace(f, pointwise_as_dot=False, shift_in_place=False) for f in formulations
    }
  want = _jitted_video_embeddings(backbone)(params, state, clips)
  folded_params, folded_state = mmv.fold_batch_norm(params, state, backbone=backbone)
  for formulation in formulations:
    got = _jitted_video_embeddings(backbone, formulation)(folded_params, folded_state, clips)
    for name, value in want.items():
      error = np.abs(np.asarray(got[name]) - value).max() / np.abs(value).max()
      assert error <= 1e-5, (formulation, name, error)


@pytest.mark.parametrize("backbone", mmv.BACKBONES)
def test_fold_batch_norm_gives_the_folded_formulations_tree(backbone):
  """Every BatchNorm after a kernel is folded (its moving averages gone), no other."""
  folded = mmv.fold_batch_norm(*_random_video_model(backbone), backbone=backbone)
  formulation = mmv.Formulation(batch_norm_folded=True)
  init = mmv.transformed(backbone, formulation=formulation).init
  inputs = (jnp.zeros((1, 2, 32, 32, 3)), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 2), jnp.int32))
  want = tuple(
      embedder.video_subtree(t) for t in jax.eval_shape(init, jax.random.PRNGKey(0), *inputs)
  )
  as_struct = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), t)
  assert as_struct(folded) == as_struct(want)
  assert len(folded[1]) < len(_random_video_model(backbone)[1])


@pytest.mark.parametrize(
    "kernel, stride",
    [
        ((2, 4, 4), (1, 1, 1)),
        ((1, 3, 3), (1, 2, 2)),
        ((3, 1, 1), (1, 1, 1)),
        ((3, 1, 1), (2, 1, 1)),
        ((1, 1, 1), (1, 1, 1)),
    ],
)
def test_s3d_conv_decomposed_equals_3d_and_initialises_as_haiku(kernel, stride):
  x = np.random.default_rng(15).standard_normal((2, 5, 7, 6, 8)).astype(np.float32)
  forms = {
      decomposed: hk.transform(lambda v, d=decomposed: s3d.Conv3D(16, kernel, stride, d)(v))
      for decomposed in (False, True)
  }
  reference = hk.transform(
      lambda v: hk.Conv3D(16, kernel, stride=stride, padding="SAME", with_bias=False)(v)
  )
  key = jax.random.PRNGKey(3)
  params = reference.init(key, x)
  for form in forms.values():
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, form.init(key, x), params))
  want = reference.apply(params, None, x)
  np.testing.assert_allclose(forms[True].apply(params, None, x), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(forms[False].apply(params, None, x), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "window, stride", [((3, 3, 3), (1, 1, 1)), ((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2))]
)
def test_s3d_max_pool_decomposed_gives_the_same_maxima(window, stride):
  x = jnp.asarray(np.random.default_rng(16).standard_normal((2, 5, 7, 6, 3)), jnp.float32)
  whole, per_axis = (s3d.max_pool(x, window, stride, decomposed) for decomposed in (False, True))
  np.testing.assert_array_equal(per_axis, whole)


def test_audio_and_text_embeddings_shapes():
  params, state = (
      _randomize(tree, seed)
      for tree, seed in zip(validation.checkpoint_shapes("tsm_resnet_x1"), (20, 21))
  )
  spectrograms = jax.random.normal(jax.random.PRNGKey(2), (2, 96, 40, 1))
  # Under jit: op by op, the audio ResNet-50 takes several times as long.
  audio_out = jax.jit(functools.partial(mmv.audio_embeddings, backbone="tsm_resnet_x1"))(
      params, state, spectrograms
  )
  assert {k: v.shape for k, v in audio_out.items()} == {
      mmv.AUDIO_REPR: (2, 2048),
      mmv.AUDIO_VIDEO: (2, 512),
      mmv.AUDIO_TEXT: (2, 256),
  }
  word_ids = jnp.array([[1, 5, 9], [65535, 0, 2]], jnp.int32)
  text_out = jax.jit(functools.partial(mmv.text_embeddings, backbone="tsm_resnet_x1"))(
      params, state, word_ids
  )
  assert {k: v.shape for k, v in text_out.items()} == {
      mmv.TEXT_REPR: (2, 2048),
      mmv.TEXT_VIDEO: (2, 256),
      mmv.TEXT_AUDIO: (2, 512),
  }
  for value in [*audio_out.values(), *text_out.values()]:
    assert value.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(value)))


def test_unknown_backbone_is_rejected():
  with pytest.raises(ValueError, match="Unknown backbone"):
    mmv.param_shapes("resnet18")
