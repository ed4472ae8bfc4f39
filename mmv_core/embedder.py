"""The public embedding API: a checkpoint in, `vid_repr` features out.

    emb = VideoEmbedder.from_checkpoint("mmv_s3d.pkl")
    feats = emb.embed(frames)          # uint8 [T, H, W, 3] -> float32 [10, 1024]

`embed_clips` is the batched form the pipelines use: clips of one shape are
padded to a fixed batch, compiled once per shape and split across every local
accelerator device (data parallel; each device sees whole clips, so results do
not depend on the number of devices).

`enable_compilation_cache` keeps compiled programs on disk, so that a process
that runs shapes compiled before (a second run, another worker process on the
same machine) loads them instead of compiling again.
"""

import functools
import threading
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmv_core import checkpoints
from mmv_core import video
from mmv_core.embedder_config import EmbedderConfig, compilation_cache_dir
from mmv_core.models import mmv
from mmv_core.models.names import VID_REPR, VIDEO_AUDIO, VIDEO_OUTPUTS, VIDEO_TEXT

# Only these subtrees take part in video embeddings; the audio and text
# towers (about 44 M parameters) stay on the host.
_VIDEO_MODULES = ("text_audio_video/visual_module", "text_audio_video/~_get_pair_embedding_heads")
_BATCH_AXIS = "batch"
# EmbedderConfig.precision -> (dtype of weights and activations, matmul precision).
PRECISION_SETTINGS = {
    "float32": (jnp.float32, "highest"),
    "tensorfloat32": (jnp.float32, "tensorfloat32"),
    "bfloat16": (jnp.bfloat16, "default"),
}


def enable_compilation_cache(cache_dir: str | None = None) -> str:
  """Makes this process keep every compiled program under `compilation_cache_dir(cache_dir)`.

  Call it before the process compiles anything: JAX decides once per process,
  at its first compilation, whether it uses the cache. Every program is kept,
  whatever its size or compile time, so that CPU programs (compiled in under
  JAX's default threshold of 1 s) are cached too. Returns the directory.
  """
  cache_dir = compilation_cache_dir(cache_dir)
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return cache_dir


def video_subtree(tree: dict) -> dict:
  """The part of a params or state tree that video embeddings read."""
  return {path: leaves for path, leaves in tree.items() if path.startswith(_VIDEO_MODULES)}


class VideoEmbedder:
  """Computes MMV video embeddings with one backbone's weights."""

  def __init__(
      self,
      params: dict,
      state: dict,
      backbone: str,
      config: EmbedderConfig = EmbedderConfig(),
      devices: Sequence[jax.Device] | None = None,
  ):
    if backbone not in mmv.BACKBONES:
      raise ValueError(f"unknown backbone {backbone!r}; expected one of {mmv.BACKBONES}")
    self.backbone = backbone
    self.config = config
    self.devices = list(devices or jax.local_devices())
    self._mesh = Mesh(np.array(self.devices), (_BATCH_AXIS,))
    self._batch_size = -(-config.batch_size // len(self.devices)) * len(self.devices)
    if config.formulation == "reference":
      self.formulation = mmv.REFERENCE
    else:
      self.formulation = mmv.fastest_formulation(self.devices[0].platform)
    params, state = video_subtree(params), video_subtree(state)
    if self.formulation.batch_norm_folded:
      params, state = mmv.fold_batch_norm(params, state, backbone=backbone)
    replicated = NamedSharding(self._mesh, PartitionSpec())
    dtype, matmul_precision = PRECISION_SETTINGS[config.precision]
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    self._params = jax.device_put(jax.tree.map(cast, params), replicated)
    self._state = jax.device_put(jax.tree.map(cast, state), replicated)
    self._clip_sharding = NamedSharding(self._mesh, PartitionSpec(_BATCH_AXIS))
    self._forward = _jitted_forward(
        backbone, self.formulation, dtype, matmul_precision, self._clip_sharding
    )
    # Threads sharing this embedder (a worker's harness threads) run one forward
    # pass at a time: each pass in flight would hold its activations in device
    # memory (inputs, one batch per thread, are moved before the lock).
    self._device_lock = threading.Lock()

  @classmethod
  def from_checkpoint(
      cls,
      path: str,
      backbone: str | None = None,
      config: EmbedderConfig = EmbedderConfig(),
      devices: Sequence[jax.Device] | None = None,
  ) -> "VideoEmbedder":
    """Loads a released (or converted .npz) checkpoint and checks its tree.

    Args:
      path: local path, `gs://` or `https://` URL of a `.pkl` or `.npz` file.
      backbone: `s3d`, `tsm_resnet_x1` or `tsm_resnet_x2`; None infers it from
        the file name as the original evaluation did.
    """
    backbone = backbone or checkpoints.infer_backbone(path)
    ckpt = checkpoints.load_checkpoint(path)
    checkpoints.validate_backbone(ckpt.params, ckpt.state, backbone, source=path)
    return cls(ckpt.params, ckpt.state, backbone, config, devices)

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def embed(
      self,
      frames: np.ndarray,
      num_windows: int = video.DEFAULT_NUM_TEST_WINDOWS,
      num_frames: int = video.DEFAULT_NUM_FRAMES,
      stride: int = video.DEFAULT_STRIDE,
      min_resize: int = video.DEFAULT_MIN_RESIZE,
      crop_size: int = video.DEFAULT_CROP_SIZE,
  ) -> np.ndarray:
    """`vid_repr` of each test window of one video.

    Args:
      frames: uint8 [L, H, W, 3], the decoded video.
    Returns:
      float32 [num_windows, D], D = 1024 (S3D), 2048 or 4096 (TSM-ResNet).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    clips = video.test_clips(
        frames,
        num_windows=num_windows,
        num_frames=num_frames,
        stride=stride,
        min_resize=min_resize,
        crop_size=crop_size,
    )
    return self.embed_clips(clips)[VID_REPR]

  def embed_clips(
      self, clips: np.ndarray, outputs: Sequence[str] = (VID_REPR,)
  ) -> dict[str, np.ndarray]:
    """Embeds many clips at once.

    Args:
      clips: [N, T, H, W, 3], uint8 (scaled by 1/255 on the device, which is
        the protocol's own scaling) or float32 in [0, 1]. T, H, W even for S3D.
      outputs: any of `VIDEO_OUTPUTS`.
    Returns:
      {name: float32 [N, dim]} for each requested output.
    """
    unknown = set(outputs) - set(VIDEO_OUTPUTS)
    if unknown:
      raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {VIDEO_OUTPUTS}")
    clips = np.asarray(clips)
    if clips.ndim != 5 or clips.shape[-1] != 3:
      raise ValueError(f"clips must be [N, T, H, W, 3], got {clips.shape}")
    if clips.dtype not in (np.uint8, np.float32):
      raise ValueError(f"clips must be uint8 or float32, got {clips.dtype}")
    results = {name: [] for name in outputs}
    for start in range(0, len(clips), self._batch_size):
      batch = clips[start : start + self._batch_size]
      on_device = jax.device_put(_pad_to(batch, self._batch_size), self._clip_sharding)
      with self._device_lock:
        out = self._forward(self._params, self._state, on_device)
        for name in outputs:
          results[name].append(np.asarray(out[name])[: len(batch)])
    return {
        name: (np.concatenate(parts) if parts else np.zeros((0, self.output_dim(name)), np.float32))
        for name, parts in results.items()
    }

  def output_dim(self, name: str) -> int:
    return {
        VID_REPR: mmv.REPR_DIMS[self.backbone],
        VIDEO_AUDIO: mmv.VIDEO_AUDIO_DIM,
        VIDEO_TEXT: mmv.VIDEO_TEXT_DIM,
    }[name]


def _pad_to(batch: np.ndarray, size: int) -> np.ndarray:
  """Pads the leading axis with copies of the last clip (keeps values finite)."""
  missing = size - len(batch)
  if missing == 0:
    return batch
  return np.concatenate([batch, np.repeat(batch[-1:], missing, axis=0)])


@functools.cache
def _jitted_forward(
    backbone: str, formulation: mmv.Formulation, dtype, matmul_precision: str, clip_sharding
):
  """`_forward` under jit, one per configuration: embedders alike share compiled programs.

  A second embedder of the same backbone, formulation, precision and devices
  (a reloaded model, a notebook's second one) compiles nothing.
  """
  return jax.jit(
      functools.partial(
          _forward,
          backbone=backbone,
          formulation=formulation,
          dtype=dtype,
          matmul_precision=matmul_precision,
      ),
      out_shardings=clip_sharding,
  )


def _forward(
    params, state, clips, *, backbone: str, formulation: mmv.Formulation, dtype, matmul_precision
) -> dict:
  if clips.dtype == jnp.uint8:
    clips = clips.astype(jnp.float32) / 255.0
  with jax.default_matmul_precision(matmul_precision):
    out = mmv.video_embeddings(
        params, state, clips.astype(dtype), backbone=backbone, formulation=formulation
    )
  return {name: out[name].astype(jnp.float32) for name in VIDEO_OUTPUTS}
