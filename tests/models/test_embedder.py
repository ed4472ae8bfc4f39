"""VideoEmbedder: the public one-video API and its batched form (four devices: the job's tests)."""

import functools
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from numerics import assert_features_close

from mmv_core import checkpoints
from mmv_core import embedder_config
from mmv_core import video
from mmv_core.embedder import VideoEmbedder
from mmv_core.embedder_config import EmbedderConfig
from mmv_core.models import mmv
from mmv_core.models.names import VID_REPR, VIDEO_AUDIO, VIDEO_TEXT

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Small clips keep a forward pass to a fraction of a second on a CPU.
SMALL = dict(num_windows=3, num_frames=4, stride=2, min_resize=32, crop_size=32)


def _random_video(seed: int = 0, length: int = 20, height: int = 36, width: int = 48) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (length, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tsm_checkpoint(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("ckpt") / "mmv_tsm_resnet_x1.pkl"
  checkpoints.write_random_checkpoint(path, *checkpoints.checkpoint_shapes("tsm_resnet_x1"), seed=2)
  return path


@pytest.fixture(scope="module")
def s3d_embedder(checkpoint_path) -> VideoEmbedder:
  # The default batch of 8, as the README's examples and the job's tests use:
  # the run's compilation cache (tests/conftest.py) then compiles S3D-G once.
  return VideoEmbedder.from_checkpoint(str(checkpoint_path))


@functools.cache
def _reference_forward(backbone: str):
  """The model function as trained (reference formulation), compiled once per backbone."""
  return jax.jit(functools.partial(mmv.video_embeddings, backbone=backbone))


def _one_clip_at_a_time(
    ckpt: checkpoints.Checkpoint, clips: np.ndarray, backbone: str, output: str = VID_REPR
) -> np.ndarray:
  """The original evaluation's way: the model function on one clip at a time."""
  forward = _reference_forward(backbone)
  return np.concatenate(
      [np.asarray(forward(ckpt.params, ckpt.state, clip[None])[output]) for clip in clips]
  )


def test_from_checkpoint_infers_backbone_from_file_name(s3d_embedder):
  assert s3d_embedder.backbone == "s3d"


def test_embed_is_vid_repr_of_each_test_window(s3d_embedder, checkpoint_path):
  frames = _random_video()
  feats = s3d_embedder.embed(frames, **SMALL)

  assert feats.dtype == np.float32
  assert feats.shape == (SMALL["num_windows"], mmv.REPR_DIMS["s3d"])
  clips = video.test_clips(frames, **SMALL)
  expected = _one_clip_at_a_time(checkpoints.load_checkpoint(str(checkpoint_path)), clips, "s3d")
  assert_features_close(feats, expected)
  # Different windows of a random video see different frames.
  assert not np.allclose(feats[0], feats[1])


def test_embed_clips_pads_partial_batches_without_changing_results(s3d_embedder):
  clips = video.test_clips(_random_video(1), **{**SMALL, "num_windows": 10})
  all_at_once = s3d_embedder.embed_clips(clips)[VID_REPR]  # Batches of 8, the second padded.
  singles = np.concatenate([s3d_embedder.embed_clips(c[None])[VID_REPR] for c in clips])
  assert all_at_once.shape == (10, 1024)
  assert_features_close(all_at_once, singles)


def test_a_second_embedder_alike_compiles_nothing(s3d_embedder, checkpoint_path):
  clips = video.test_clips(_random_video(8), **SMALL)
  first = s3d_embedder.embed_clips(clips)[VID_REPR]
  events = []
  jax.monitoring.register_event_duration_secs_listener(lambda event, _, **__: events.append(event))
  again = VideoEmbedder.from_checkpoint(str(checkpoint_path), config=s3d_embedder.config)
  np.testing.assert_array_equal(again.embed_clips(clips)[VID_REPR], first)
  # Neither traced nor lowered nor compiled again (nor loaded from the run's compilation cache).
  assert not [event for event in events if event.startswith("/jax/core/compile/")]


def test_uint8_clips_are_scaled_like_the_protocol(s3d_embedder):
  frames = _random_video(2)
  float_clips = video.test_clips(frames, **SMALL)
  uint8_clips = np.round(float_clips * 255).astype(np.uint8)
  np.testing.assert_array_equal(uint8_clips.astype(np.float32) / 255, float_clips)
  assert_features_close(
      s3d_embedder.embed_clips(uint8_clips)[VID_REPR],
      s3d_embedder.embed_clips(float_clips)[VID_REPR],
  )


def test_joint_space_embeddings(s3d_embedder, checkpoint_path):
  clips = video.test_clips(_random_video(3), **SMALL)
  out = s3d_embedder.embed_clips(clips, outputs=(VID_REPR, VIDEO_AUDIO, VIDEO_TEXT))
  assert out[VIDEO_AUDIO].shape == (3, 512) and out[VIDEO_TEXT].shape == (3, 256)
  ckpt = checkpoints.load_checkpoint(str(checkpoint_path))
  assert_features_close(out[VIDEO_TEXT], _one_clip_at_a_time(ckpt, clips, "s3d", VIDEO_TEXT))


# TSM-ResNet-50x2 is this model at twice the width (tests/models/test_models.py runs it).
def test_tsm_resnet_embeds(tsm_checkpoint):
  embedder = VideoEmbedder.from_checkpoint(str(tsm_checkpoint))
  feats = embedder.embed(_random_video(4), **SMALL)
  assert embedder.backbone == "tsm_resnet_x1"
  assert feats.shape == (3, mmv.REPR_DIMS["tsm_resnet_x1"]) and np.isfinite(feats).all()


def test_wrong_backbone_names_the_checkpoint_and_the_problem(checkpoint_path):
  with pytest.raises(checkpoints.WrongBackboneError, match="mmv_s3d.pkl") as error:
    VideoEmbedder.from_checkpoint(str(checkpoint_path), backbone="tsm_resnet_x1")
  assert "a s3d checkpoint" in str(error.value) and "not tsm_resnet_x1" in str(error.value)


@pytest.mark.parametrize(
    "frames, problem",
    [
        (np.zeros((8, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((8, 32, 32), np.uint8), r"\[T, H, W, 3\]"),
    ],
)
def test_embed_rejects_bad_frames(s3d_embedder, frames, problem):
  with pytest.raises(ValueError, match=problem):
    s3d_embedder.embed(frames, **SMALL)


# On TSM-ResNet: its bfloat16 program compiles in half the time of S3D-G's.
def test_bfloat16_mode_is_close_to_float32(tsm_checkpoint):
  clips = video.test_clips(_random_video(5), **SMALL)
  f32 = VideoEmbedder.from_checkpoint(str(tsm_checkpoint)).embed_clips(clips)[VID_REPR]
  bf16 = VideoEmbedder.from_checkpoint(
      str(tsm_checkpoint), config=EmbedderConfig(precision="bfloat16")
  ).embed_clips(clips)[VID_REPR]
  assert bf16.dtype == np.float32
  cosine = np.sum(f32 * bf16, -1) / np.linalg.norm(f32, axis=-1) / np.linalg.norm(bf16, axis=-1)
  assert (cosine > 0.99).all()
  assert not np.array_equal(f32, bf16)


def test_a_second_process_loads_the_compiled_program_from_the_cache(checkpoint_path, s3d_embedder):
  """A program this process ran is in the run's cache (tests/conftest.py): the next process
  loads it and compiles nothing."""
  clips = np.zeros((2, 4, 32, 32, 3), np.uint8)
  s3d_embedder.embed_clips(clips)
  cache_dir = embedder_config.compilation_cache_dir()
  script = textwrap.dedent(f"""
      import json, numpy as np
      from jax import monitoring
      from mmv_core.embedder import VideoEmbedder, enable_compilation_cache
      events = []
      monitoring.register_event_listener(lambda event, **_: events.append(event))
      enable_compilation_cache({cache_dir!r})
      emb = VideoEmbedder.from_checkpoint({str(checkpoint_path)!r})
      emb.embed_clips(np.zeros({clips.shape}, np.uint8))
      print(json.dumps({{"hits": events.count("/jax/compilation_cache/cache_hits"),
                        "misses": events.count("/jax/compilation_cache/cache_misses")}}))
  """)
  second = json.loads(
      subprocess.run(
          [sys.executable, "-c", script],
          check=True,
          cwd=REPO_ROOT,
          capture_output=True,
          text=True,
          env={**os.environ, "JAX_PLATFORMS": "cpu"},
      ).stdout.splitlines()[-1]
  )
  assert second["hits"] >= 1 and second["misses"] == 0


def test_compilation_cache_dir_defaults_to_the_user_cache(monkeypatch):
  monkeypatch.delenv(embedder_config.CACHE_DIR_ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
  assert embedder_config.compilation_cache_dir() == "/xdg/mmv/jax"
  monkeypatch.setenv(embedder_config.CACHE_DIR_ENV, "/env/jax")
  assert embedder_config.compilation_cache_dir() == "/env/jax"
  assert embedder_config.compilation_cache_dir("/flag/jax") == "/flag/jax"


def test_fastest_formulation_on_this_platform_unless_reference_is_asked(
    checkpoint_path, s3d_embedder
):
  """The embedder folds BatchNorm and decomposes on CPUs; `reference` keeps the trained layers.

  `test_embed_is_vid_repr_of_each_test_window` shows the fast form gives the reference's features.
  """
  config = EmbedderConfig(formulation="reference")
  reference = VideoEmbedder.from_checkpoint(str(checkpoint_path), config=config)
  assert reference.formulation == mmv.REFERENCE
  assert s3d_embedder.formulation == mmv.fastest_formulation("cpu") != mmv.REFERENCE


@pytest.mark.parametrize("setting", ["precision", "formulation"])
def test_config_names_the_allowed_values(setting):
  with pytest.raises(ValueError, match=f"{setting} must be one of .*not 'float16'"):
    EmbedderConfig(**{setting: "float16"})
