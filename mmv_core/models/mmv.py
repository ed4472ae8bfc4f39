"""The whole MMV model (`text_audio_video`) and its pure-function API.

One haiku module holds the visual backbone (`visual_module`), the audio
ResNet-V2-50 (`audio_module`), the text module (`text_module`) and the
projection heads (`~_get_pair_embedding_heads/...`) of the 'fac_relu' graph,
with exactly the module paths, names and shapes of the released checkpoints.

Callers use plain functions of `(params, state)` nested dicts:
`param_shapes`, `video_embeddings` (the UCF101 feature `vid_repr` and the joint
embeddings), `audio_embeddings`, `text_embeddings` and `vid_repr_flops`.
These run the model in evaluation mode; `transformed(backbone, is_training=True)`
is the haiku transform for fine-tuning.

`video_embeddings` can compute the same features in a faster `Formulation`
(`fastest_formulation`), on parameters prepared once by `fold_batch_norm`.
"""

import dataclasses
import functools
from typing import Mapping

import haiku as hk
import jax
import jax.numpy as jnp

from mmv_core.models import audio
from mmv_core.models import normalization
from mmv_core.models import s3d
from mmv_core.models import text
from mmv_core.models import tsm_resnet
from mmv_core.models.names import AUDIO_REPR, AUDIO_TEXT, AUDIO_VIDEO, BACKBONES, S3D
from mmv_core.models.names import TEXT_AUDIO, TEXT_REPR, TEXT_VIDEO, TSM_RESNET_X1, TSM_RESNET_X2
from mmv_core.models.names import VID_REPR, VIDEO_AUDIO, VIDEO_TEXT

REPR_DIMS = {
    S3D: s3d.OUTPUT_DIM,
    TSM_RESNET_X1: tsm_resnet.output_dim(1),
    TSM_RESNET_X2: tsm_resnet.output_dim(2),
}
MODEL_NAME = "text_audio_video"
# Joint embedding spaces.
VIDEO_AUDIO_DIM = 512
# XLA cost analysis of `vid_repr` for one 32x224x224 clip (docs/models.md).
SPEC_GFLOPS = {S3D: 70.0, TSM_RESNET_X1: 254.0, TSM_RESNET_X2: 1000.0}
VIDEO_TEXT_DIM = 256
AUDIO_TEXT_DIM = 512
_HEAD_HIDDEN_DIM = 512  # Inner width of the video->audio 'mlp@512' head.

Params = Mapping[str, Mapping[str, jax.Array]]
State = Mapping[str, Mapping[str, jax.Array]]

# Inputs for tracing the model's init: the parameters' shapes do not depend on them.
_INIT_CLIP_SHAPE = (1, 2, 32, 32, 3)
_INIT_SPECTROGRAM_SHAPE = (1, 8, 8, 1)
_INIT_WORDS = 2

# Module path of each backbone, whose BatchNorms `fold_batch_norm` folds.
_BACKBONE_PATHS = {
    S3D: "text_audio_video/visual_module/~/S3D/",
    TSM_RESNET_X1: "text_audio_video/visual_module/~/TSMResNetV2/",
    TSM_RESNET_X2: "text_audio_video/visual_module/~/TSMResNetV2/",
}
_KERNEL_TO_NORM = {
    S3D: s3d.KERNEL_TO_NORM,
    TSM_RESNET_X1: tsm_resnet.KERNEL_TO_NORM,
    TSM_RESNET_X2: tsm_resnet.KERNEL_TO_NORM,
}


@dataclasses.dataclass(frozen=True)
class Formulation:
  """How the visual backbone computes; the parameters and the features stay.

  Every formulation gives the reference's features up to float32 rounding
  (relative error under 1e-5, tests/test_models.py).

  Attributes:
    decompose_3d: run S3D-G's 3D convolutions and max pools in forms XLA's
      CPU backend runs faster (`s3d.Conv3D`, `s3d.max_pool`); this includes
      its 1x1x1 convolutions as matrix products.
    pointwise_as_dot: run TSM-ResNet's 1x1 convolutions as matrix products
      (`convolution.Conv2D`).
    shift_in_place: TSM-ResNet's temporal shift keeps channels in place and
      the next kernel's rows follow them (`tsm_resnet.ShiftedPointwise`).
    batch_norm_folded: the parameters went through `fold_batch_norm`, so the
      BatchNorms that follow a kernel only add an offset.
  """

  decompose_3d: bool = False
  pointwise_as_dot: bool = False
  shift_in_place: bool = False
  batch_norm_folded: bool = False


# The layers as the checkpoints were trained: the baseline of the benchmarks.
REFERENCE = Formulation()


def fastest_formulation(platform: str) -> Formulation:
  """The fastest formulation measured for a JAX platform ("cpu", "gpu", "tpu").

  Folding BatchNorm removes a pass over every activation everywhere. S3D-G's
  3D operations run several times faster decomposed on XLA's CPU backend,
  1x1 convolutions up to 2.7 times faster as matrix products, TSM-ResNet's
  shift three times faster in place (bench/model_bench.py, docs/models.md). On GPUs and TPUs, where the
  convolution kernels are native, those layers stay as trained until a
  benchmark there shows otherwise (bench/gpu.sh times both formulations).
  """
  on_cpu = platform == "cpu"
  return Formulation(
      decompose_3d=on_cpu, pointwise_as_dot=on_cpu, shift_in_place=on_cpu, batch_norm_folded=True
  )


def fold_batch_norm(params: Params, state: State, *, backbone: str) -> tuple[dict, dict]:
  """(params, state) for `Formulation(batch_norm_folded=True)`, computed once.

  Each evaluation-mode BatchNorm that follows a kernel of the visual backbone
  is folded into that kernel (`normalization.fold_into_kernels`); the rest of
  the trees is unchanged. Such trees only evaluate: train on the originals.
  """
  _check_backbone(backbone)
  return normalization.fold_into_kernels(
      params, state, _BACKBONE_PATHS[backbone], _KERNEL_TO_NORM[backbone]
  )


def _check_backbone(backbone: str) -> None:
  if backbone not in BACKBONES:
    raise ValueError(f"Unknown backbone {backbone!r}; expected one of {BACKBONES}")


class _EmbeddingHead(hk.Module):
  """Projection into a joint space: Linear, or Linear-BN-ReLU-Linear; opt. BN after."""

  def __init__(
      self,
      dim: int,
      normalize_fn: normalization.NormalizeFn,
      name: str,
      *,
      hidden_dim: int | None = None,
      bn_after: bool = False,
  ):
    super().__init__(name=name)
    self._dim = dim
    self._hidden_dim = hidden_dim
    self._bn_after = bn_after
    self._normalize_fn = normalize_fn

  def __call__(self, x: jax.Array, is_training: bool) -> jax.Array:
    """float32 [B, D_in] -> float32 [B, dim]."""
    if self._hidden_dim is None:
      x = hk.Linear(self._dim, name="final_projection")(x)
    else:
      x = hk.Linear(self._hidden_dim, name="final_projection_inner")(x)
      x = jax.nn.relu(self._normalize_fn(x, is_training))
      # A bias before a BatchNorm would be cancelled by its mean.
      x = hk.Linear(self._dim, with_bias=not self._bn_after, name="final_projection")(x)
    if self._bn_after:
      x = self._normalize_fn(x, is_training)
    return x


class _VisualModule(hk.Module):
  """Holds the chosen visual backbone (created in the constructor, as stored)."""

  def __init__(
      self, backbone: str, normalize_fn: normalization.NormalizeFn, formulation: Formulation
  ):
    super().__init__(name="visual_module")
    if formulation.batch_norm_folded:
      conv_normalize_fn = normalization.folded_normalize
    else:
      conv_normalize_fn = normalize_fn
    if backbone == S3D:
      self._cnn = s3d.S3D(conv_normalize_fn, decomposed=formulation.decompose_3d)
    else:
      width = 2 if backbone == TSM_RESNET_X2 else 1
      layers = tsm_resnet.Layers(
          normalize_fn,
          conv_normalize_fn,
          pointwise_as_dot=formulation.pointwise_as_dot,
          shift_in_place=formulation.shift_in_place,
      )
      self._cnn = tsm_resnet.TSMResNetV2(layers, width_mult=width)

  def __call__(self, clips: jax.Array, is_training: bool) -> jax.Array:
    return self._cnn(clips, is_training)


class _AudioModule(hk.Module):
  """Holds the audio ResNet-V2-50."""

  def __init__(self, normalize_fn: normalization.NormalizeFn):
    super().__init__(name="audio_module")
    self._cnn = audio.AudioResNetV2(normalize_fn)

  def __call__(self, spectrograms: jax.Array, is_training: bool) -> jax.Array:
    return self._cnn(spectrograms, is_training)


class MMVModel(hk.Module):
  """Video, audio and text towers with the 'fac_relu' projection heads.

  Video reaches the text space through the audio space: video_text =
  vis_embd(relu(video_audio)). In evaluation audio uses the same route
  (audio_text = vis_embd(relu(audio_video))); `audio2txt_embd` is only used in
  training, as in the original model.
  """

  def __init__(
      self,
      backbone: str,
      bn_axis_name: str | None = None,
      formulation: Formulation = REFERENCE,
  ):
    """Creates the model.

    Args:
      backbone: one of BACKBONES.
      bn_axis_name: device axis for cross-replica BatchNorm statistics in
        training; unused in evaluation.
      formulation: how the visual backbone computes (evaluation only, unless
        REFERENCE).
    """
    super().__init__(name=MODEL_NAME)
    _check_backbone(backbone)
    self._backbone = backbone
    self._normalize_fn = normalization.make_normalize_fn(bn_axis_name)
    self._formulation = formulation

  def _get_pair_embedding_heads(self) -> dict[str, _EmbeddingHead]:
    # Created inside this method so the heads live under
    # `~_get_pair_embedding_heads/`, where the checkpoints store them.
    norm = self._normalize_fn
    return {
        "vid2audio": _EmbeddingHead(
            VIDEO_AUDIO_DIM, norm, "vid2audio_embd", hidden_dim=_HEAD_HIDDEN_DIM, bn_after=True
        ),
        "vid2txt": _EmbeddingHead(VIDEO_TEXT_DIM, norm, "vis_embd", bn_after=True),
        "audio2vid": _EmbeddingHead(VIDEO_AUDIO_DIM, norm, "audio_embd"),
        "audio2txt": _EmbeddingHead(AUDIO_TEXT_DIM, norm, "audio2txt_embd"),
        "txt2vid": _EmbeddingHead(VIDEO_TEXT_DIM, norm, "txt_embd"),
        "txt2audio": _EmbeddingHead(AUDIO_TEXT_DIM, norm, "txt2audio_embd"),
    }

  def __call__(
      self,
      clips: jax.Array | None = None,
      spectrograms: jax.Array | None = None,
      word_ids: jax.Array | None = None,
      *,
      is_training: bool,
  ) -> dict[str, jax.Array]:
    """Embeds whichever modalities are given.

    Args:
      clips: float32 [B, T, H, W, 3] in [0, 1] (T, H, W even for S3D).
      spectrograms: float32 [B, 96, 40, 1] log-mel spectrograms.
      word_ids: int32 [B, N] word indices.
      is_training: batch statistics and moving-average updates in BatchNorm.

    Returns:
      float32 arrays: for video VID_REPR [B, REPR_DIMS[backbone]], VIDEO_AUDIO
      [B, 512], VIDEO_TEXT [B, 256]; for audio AUDIO_REPR [B, 2048], AUDIO_VIDEO
      [B, 512], AUDIO_TEXT [B, 256] in evaluation ([B, 512] in training); for
      text TEXT_REPR [B, 2048], TEXT_VIDEO [B, 256], TEXT_AUDIO [B, 512].
    """
    heads = self._get_pair_embedding_heads()
    outputs = {}
    if clips is not None:
      vid_repr = _VisualModule(self._backbone, self._normalize_fn, self._formulation)(
          clips, is_training
      )
      video_audio = heads["vid2audio"](vid_repr, is_training)
      outputs[VID_REPR] = vid_repr
      outputs[VIDEO_AUDIO] = video_audio
      outputs[VIDEO_TEXT] = heads["vid2txt"](jax.nn.relu(video_audio), is_training)
    if spectrograms is not None:
      audio_repr = _AudioModule(self._normalize_fn)(spectrograms, is_training)
      audio_video = heads["audio2vid"](audio_repr, is_training)
      outputs[AUDIO_REPR] = audio_repr
      outputs[AUDIO_VIDEO] = audio_video
      if is_training:
        # Training keeps the video->text head's BN statistics video-only.
        outputs[AUDIO_TEXT] = heads["audio2txt"](audio_repr, is_training)
      else:
        if hk.running_init():
          # Unused in evaluation, but part of the checkpoints' parameter tree.
          heads["audio2txt"](audio_repr, is_training)
        outputs[AUDIO_TEXT] = heads["vid2txt"](jax.nn.relu(audio_video), is_training)
    if word_ids is not None:
      text_repr = text.TextModule()(word_ids)
      outputs[TEXT_REPR] = text_repr
      outputs[TEXT_VIDEO] = heads["txt2vid"](text_repr, is_training)
      outputs[TEXT_AUDIO] = heads["txt2audio"](text_repr, is_training)
    return outputs


def _forward(
    clips=None,
    spectrograms=None,
    word_ids=None,
    *,
    backbone: str,
    is_training: bool,
    bn_axis_name: str | None = None,
    formulation: Formulation = REFERENCE,
):
  model = MMVModel(backbone, bn_axis_name, formulation)
  return model(clips, spectrograms, word_ids, is_training=is_training)


@functools.lru_cache(maxsize=None)
def transformed(
    backbone: str,
    is_training: bool = False,
    bn_axis_name: str | None = None,
    formulation: Formulation = REFERENCE,
) -> hk.TransformedWithState:
  """The haiku transform of `MMVModel(backbone)(clips, spectrograms, word_ids)`.

  For fine-tuning (`is_training=True`); evaluation users want the functions
  below. `apply(params, state, None, clips, spectrograms, word_ids)`.
  """
  _check_backbone(backbone)
  return hk.transform_with_state(
      functools.partial(
          _forward,
          backbone=backbone,
          is_training=is_training,
          bn_axis_name=bn_axis_name,
          formulation=formulation,
      )
  )


def _init_inputs() -> tuple[jax.ShapeDtypeStruct, ...]:
  return (
      jax.ShapeDtypeStruct(_INIT_CLIP_SHAPE, jnp.float32),
      jax.ShapeDtypeStruct(_INIT_SPECTROGRAM_SHAPE, jnp.float32),
      jax.ShapeDtypeStruct((1, _INIT_WORDS), jnp.int32),
  )


@functools.cache
def _traced_param_shapes(backbone: str) -> tuple[Params, State]:
  return jax.eval_shape(transformed(backbone).init, jax.random.PRNGKey(0), *_init_inputs())


def param_shapes(backbone: str) -> tuple[Params, State]:
  """(params, state) of the full model as jax.ShapeDtypeStruct trees (no compute).

  The trees (visual, audio, text, all heads) equal a released checkpoint's.
  Tracing the model takes seconds, so it is done once per backbone; each call
  gets its own dicts.
  """
  return tuple(
      {module: dict(leaves) for module, leaves in tree.items()}
      for tree in _traced_param_shapes(backbone)
  )


def _apply(
    backbone: str,
    params: Params,
    state: State,
    formulation: Formulation = REFERENCE,
    **inputs,
) -> dict[str, jax.Array]:
  outputs, _ = transformed(backbone, formulation=formulation).apply(params, state, None, **inputs)
  return outputs


def video_embeddings(
    params: Params,
    state: State,
    clips: jax.Array,
    *,
    backbone: str,
    formulation: Formulation = REFERENCE,
) -> dict[str, jax.Array]:
  """Evaluation-mode video features; pure, jit-able (backbone, formulation static).

  Args:
    params: full model params (as a checkpoint or `checkpoints.random_trees`
      gives them; through `fold_batch_norm` for a formulation with
      `batch_norm_folded`).
    state: full model state (idem).
    clips: float32 [B, T, H, W, 3] in [0, 1]; T, H, W even for S3D.
    backbone: one of BACKBONES.
    formulation: how the backbone computes; the features are the same.

  Returns:
    {VID_REPR: [B, REPR_DIMS[backbone]], VIDEO_AUDIO: [B, 512],
     VIDEO_TEXT: [B, 256]}, float32.
  """
  return _apply(backbone, params, state, formulation, clips=clips)


def audio_embeddings(
    params: Params, state: State, spectrograms: jax.Array, *, backbone: str
) -> dict[str, jax.Array]:
  """Evaluation-mode audio features of float32 [B, 96, 40, 1] log-mel spectrograms.

  Returns {AUDIO_REPR: [B, 2048], AUDIO_VIDEO: [B, 512], AUDIO_TEXT: [B, 256]}.
  """
  return _apply(backbone, params, state, spectrograms=spectrograms)


def text_embeddings(
    params: Params, state: State, word_ids: jax.Array, *, backbone: str
) -> dict[str, jax.Array]:
  """Evaluation-mode text features of int32 [B, N] word ids.

  Returns {TEXT_REPR: [B, 2048], TEXT_VIDEO: [B, 256], TEXT_AUDIO: [B, 512]}.
  """
  return _apply(backbone, params, state, word_ids=word_ids)


def vid_repr_flops(
    backbone: str, num_frames: int = 32, size: int = 224, batch_size: int = 1
) -> float:
  """XLA's cost-analysis FLOPs of `vid_repr` for a clip batch, of the program as lowered.

  The lowered program's count is the model's arithmetic (within 0.2% of the
  published figures, `SPEC_GFLOPS`) and takes no compilation: a second for S3D-G
  at 32x224x224, where compiling it takes five.
  """
  params, state = param_shapes(backbone)
  clips = jax.ShapeDtypeStruct((batch_size, num_frames, size, size, 3), jnp.float32)

  def vid_repr(params: Params, state: State, clips: jax.Array) -> jax.Array:
    return video_embeddings(params, state, clips, backbone=backbone)[VID_REPR]

  return float(jax.jit(vid_repr).lower(params, state, clips).cost_analysis()["flops"])
