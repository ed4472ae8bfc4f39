"""Encoding recipes: UCF101's is today's command, HMDB51's frames, segments, keys."""

import subprocess

import numpy as np
import pytest
import simplejpeg

from mmv_core.video import encode
from mmv_core.video import encoding_recipes
from mmv_core.datasets import synthetic

AWKWARD_FILE_NAME = "Amélie's (take 2) [HD] #1+2; Rock & Roll!.avi"


def _write_video(path, frames: np.ndarray, fps: float) -> str:
  with open(path, "wb") as f:
    f.write(synthetic.encode_avi(frames, fps))
  return str(path)


def _moving_shape(width: int, height: int, fps: float, duration_s: float) -> np.ndarray:
  return synthetic.render_frames(
      0,
      3,
      np.random.default_rng(0),
      width=width,
      height=height,
      num_frames=round(fps * duration_s),
      fps=fps,
  )


def _run(recipe, input_path, **segment) -> list[bytes]:
  result = subprocess.run(
      [encode.ffmpeg_executable(), *recipe.ffmpeg_args(input_path, **segment)],
      capture_output=True,
      check=True,
  )
  return encode.split_jpeg_stream(result.stdout)


def _size(jpeg: bytes) -> tuple[int, int]:
  height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg)
  return width, height


def test_ucf101_recipe_is_the_command_ingestion_runs_today(monkeypatch):
  commands = []

  def fake_run(command, **_):
    commands.append(command)
    one_frame = simplejpeg.encode_jpeg(np.zeros((8, 8, 3), np.uint8))
    return subprocess.CompletedProcess(command, 0, stdout=one_frame, stderr=b"")

  monkeypatch.setattr(encode.subprocess, "run", fake_run)
  encode.encode_jpeg_frames(b"any bytes", name="v_X_g01_c01.avi")

  (command,) = commands
  input_path = command[command.index("-i") + 1]
  assert command == [encode.ffmpeg_executable(), *encoding_recipes.UCF101.ffmpeg_args(input_path)]
  assert encoding_recipes.UCF101.output_args == ("-qscale:v", "2", "-r", "25", "-t", "00:00:20")


def test_keys_are_pinned_and_follow_the_arguments():
  # A changed key re-encodes every cached video: change these only on purpose.
  assert encoding_recipes.UCF101.key == "ucf101-0b7435cfe6ad"
  assert encoding_recipes.HMDB51.key == "hmdb51-fb85dc9c7748"
  edited = encoding_recipes.EncodingRecipe(
      name="ucf101", output_args=("-qscale:v", "3", "-r", "25", "-t", "00:00:20"), description=""
  )
  assert edited.key.startswith("ucf101-") and edited.key != encoding_recipes.UCF101.key


@pytest.mark.parametrize(
    "width, height, expected_size",
    [
        (64, 48, (341, 256)),  # Landscape: height 256, width (64/48)*256 truncated.
        (48, 64, (256, 341)),  # Portrait: width 256, height following the aspect.
    ],
)
def test_hmdb51_recipe_gives_10_fps_with_smaller_side_256(tmp_path, width, height, expected_size):
  path = _write_video(tmp_path / "video.avi", _moving_shape(width, height, 25.0, 2.0), 25.0)

  frames = _run(encoding_recipes.HMDB51, path)

  assert len(frames) == 20  # 2 s at 10 fps.
  assert {_size(f) for f in frames} == {expected_size}


def test_hmdb51_recipe_keeps_the_first_20_seconds(tmp_path):
  path = _write_video(tmp_path / "long.avi", _moving_shape(32, 24, 5.0, 22.0), 5.0)

  assert len(_run(encoding_recipes.HMDB51, path)) == 200


@pytest.mark.parametrize(
    "recipe", list(encoding_recipes.RECIPES.values()), ids=list(encoding_recipes.RECIPES)
)
def test_file_names_with_awkward_characters_reach_ffmpeg(tmp_path, recipe):
  path = _write_video(tmp_path / AWKWARD_FILE_NAME, _moving_shape(64, 48, 10.0, 1.0), 10.0)

  assert _run(recipe, path)


DARK, BRIGHT = (0, 20), (200, 256)  # Mean grey level ranges of the two halves.


@pytest.mark.parametrize(
    "segment, grey_range",
    [
        (dict(start_s=1.0), BRIGHT),
        (dict(start_s=1.0, end_s=2.0), BRIGHT),
        (dict(end_s=1.0), DARK),
        (dict(start_s=0.0, end_s=1.0), DARK),
    ],
)
def test_a_segment_is_cut_before_reencoding(tmp_path, segment, grey_range):
  # 2 s at 25 fps: a dark first second, a bright second one.
  frames = np.zeros((50, 48, 64, 3), np.uint8)
  frames[25:] = 220
  path = _write_video(tmp_path / "halves.avi", frames, 25.0)

  jpegs = _run(encoding_recipes.UCF101, path, **segment)

  assert len(jpegs) == 25  # 1 s at the recipe's 25 fps.
  low, high = grey_range
  assert all(low <= simplejpeg.decode_jpeg(j).mean() < high for j in jpegs)


def test_segment_bounds_are_input_options_in_ffmpeg_time_syntax():
  args = encoding_recipes.HMDB51.ffmpeg_args("in.avi", start_s=12.5, end_s=1e16)

  assert args[args.index("-ss") + 1] == "12.500000"
  assert args[args.index("-to") + 1] == "10000000000000000.000000"
  assert args.index("-to") < args.index("-i")


def test_unknown_recipe_names_the_known_ones():
  with pytest.raises(encoding_recipes.UnknownRecipeError, match="known: hmdb51, ucf101"):
    encoding_recipes.get("kinetics")
  assert encoding_recipes.get("hmdb51") is encoding_recipes.HMDB51
