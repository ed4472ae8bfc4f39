"""ffmpeg re-encoding: same bytes as the protocol's file output, JPEG splitting, errors."""

import os
import subprocess
import tempfile

import numpy as np
import pytest

from mmv_core.video import encode
from mmv_core.video import encoding_recipes
from mmv_core.datasets import synthetic


@pytest.fixture(scope="module")
def avi() -> bytes:
  frames = synthetic.render_frames(
      1, 3, np.random.default_rng(0), width=64, height=48, num_frames=12, fps=10.0
  )
  return synthetic.encode_avi(frames, fps=10.0)


def test_frames_equal_protocol_file_output(avi, tmp_path):
  video_path = tmp_path / "v_X_g01_c01.avi"
  video_path.write_bytes(avi)
  out = tmp_path / "frames"
  out.mkdir()
  subprocess.run(
      [
          encode.ffmpeg_executable(),
          "-nostdin",
          "-loglevel",
          "error",
          "-i",
          str(video_path),
          *encoding_recipes.protocol_output_args(),
          str(out / "%010d.jpeg"),
      ],
      check=True,
  )
  expected = [(out / name).read_bytes() for name in sorted(os.listdir(out))]

  frames = encode.encode_jpeg_frames(avi, "v_X_g01_c01.avi")

  assert len(expected) == 30  # 1.2 s resampled to 25 fps.
  assert frames == expected


def test_no_temporary_files_left(avi, tmp_path, monkeypatch):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  encode.encode_jpeg_frames(avi)
  with pytest.raises(encode.EncodeError):
    encode.encode_jpeg_frames(b"not a video at all" * 20)
  assert os.listdir(tmp_path) == []


def _segment(marker: int, payload: bytes) -> bytes:
  return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def test_split_ignores_marker_bytes_inside_segments_and_scans():
  # A comment holding FF D9 (EOI) and a scan with a stuffed FF00 and a restart marker.
  image = (
      b"\xff\xd8"
      + _segment(0xFE, b"x\xff\xd9y")
      + _segment(0xDA, b"\x01\x02")
      + b"\x12\xff\x00\x34\xff\xd0\x56"
      + b"\xff\xd9"
  )
  other = b"\xff\xd8" + _segment(0xDA, b"\x00") + b"\x99" + b"\xff\xff\xd9"
  assert encode.split_jpeg_stream(image + other + image) == [image, other, image]


def test_split_rejects_incomplete_stream():
  with pytest.raises(encode.EncodeError, match="no end marker"):
    encode.split_jpeg_stream(b"\xff\xd8" + _segment(0xDA, b"\x00") + b"\x12\x34")


@pytest.mark.parametrize(
    "make_bad, reason",
    [
        (lambda avi: b"", "empty file"),
        (lambda avi: avi[: len(avi) // 2], "truncated AVI"),
        (lambda avi: b"This is a text file, not a video.\n" * 40, "ffmpeg exited"),
    ],
)
def test_bad_videos_raise_with_reason(avi, make_bad, reason):
  with pytest.raises(encode.EncodeError, match=reason):
    encode.encode_jpeg_frames(make_bad(avi), "v_Bad_g01_c01.avi")


def test_ffmpeg_override(monkeypatch):
  monkeypatch.setenv(encode.FFMPEG_ENV_VAR, "/opt/custom/ffmpeg")
  assert encode.ffmpeg_executable() == "/opt/custom/ffmpeg"
