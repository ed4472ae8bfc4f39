"""Re-encoding a video as JPEG frames with ffmpeg (docs/protocol.md, "Frames").

Stage: ingestion, after a video's bytes are fetched. The command is the
protocol's `ffmpeg -i VIDEO -qscale:v 2 -r 25 -t 00:00:20 OUT/%010d.jpeg`,
except that the frames go to stdout (`-f image2pipe -c:v mjpeg`, the encoder
the image2 muxer picks for `.jpeg`) and are split on JPEG markers, so the
bytes are exactly those ffmpeg would write as files and nothing is left on
disk.

The input goes through a temporary file (removed on every path): AVI keeps
its index at the end of the file, and ffmpeg reading from a pipe cannot seek
to it, so frame timing of some files would differ from the protocol's
`-i VIDEO`.

The ffmpeg binary: `$MMV_FFMPEG`, else the one in the imageio-ffmpeg wheel,
else `ffmpeg` on PATH.
"""

import os
import shutil
import struct
import subprocess
import tempfile

from mmv_core.video import encoding_recipes

FFMPEG_ENV_VAR = "MMV_FFMPEG"
ENCODE_TIMEOUT_S = 600
_STDERR_TAIL_CHARS = 600

_SOI = b"\xff\xd8"
_EOI_MARKER = 0xD9
_SOS_MARKER = 0xDA
# Markers without a length field: TEM and the restart markers RST0..RST7.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})


class EncodeError(RuntimeError):
  """A video could not be decoded or re-encoded."""


def ffmpeg_executable() -> str:
  """Path of the ffmpeg binary to run (see the module docstring for the order)."""
  if os.environ.get(FFMPEG_ENV_VAR):
    return os.environ[FFMPEG_ENV_VAR]
  try:
    import imageio_ffmpeg  # pylint: disable=import-outside-toplevel

    return imageio_ffmpeg.get_ffmpeg_exe()
  except (ImportError, RuntimeError):
    system_ffmpeg = shutil.which("ffmpeg")
    if system_ffmpeg is None:
      raise EncodeError(
          f"no ffmpeg: set ${FFMPEG_ENV_VAR}, install imageio-ffmpeg or put ffmpeg on PATH"
      ) from None
    return system_ffmpeg


def _find_ff(stream: bytes, position: int) -> int:
  """Index of the next 0xFF byte at or after `position`, or len(stream)."""
  found = stream.find(b"\xff", position)
  return len(stream) if found < 0 else found


def split_jpeg_stream(stream: bytes) -> list[bytes]:
  """Splits concatenated JPEG images into one bytes object per image.

  Walks the marker segments by their lengths and skips entropy-coded data
  (where 0xFF is always followed by 0x00 or a restart marker), so bytes that
  look like markers inside tables or scans do not cut a frame.

  Raises:
    EncodeError: the stream is not a sequence of complete JPEG images.
  """
  frames = []
  start = 0
  size = len(stream)
  while start < size:
    if stream[start : start + 2] != _SOI:
      raise EncodeError(f"JPEG stream: no start-of-image marker at byte {start}")
    position = start + 2
    while True:
      position = _find_ff(stream, position)
      while position < size and stream[position] == 0xFF:  # Fill bytes.
        position += 1
      if position >= size:
        raise EncodeError(f"JPEG stream: image at byte {start} has no end marker")
      marker = stream[position]
      position += 1
      if marker == _EOI_MARKER:
        break
      if marker in _STANDALONE_MARKERS:
        continue
      if position + 2 > size:
        raise EncodeError(f"JPEG stream: segment header cut off at byte {position}")
      (segment_length,) = struct.unpack_from(">H", stream, position)
      position += segment_length
      if marker == _SOS_MARKER:
        # Entropy-coded data runs to the next marker that is neither a stuffed
        # 0xFF00 nor a restart marker.
        position = _find_ff(stream, position)
        while position + 1 < size and (
            stream[position + 1] == 0x00 or stream[position + 1] in _STANDALONE_MARKERS
        ):
          position = _find_ff(stream, position + 2)
    frames.append(stream[start:position])
    start = position
  return frames


def check_avi_container(video: bytes) -> None:
  """Rejects empty videos and RIFF files shorter than their header declares.

  ffmpeg decodes the frames before the cut of a truncated AVI and exits
  cleanly, so truncation must be caught here to be reported.

  Raises:
    EncodeError: naming the problem.
  """
  if not video:
    raise EncodeError("empty file (0 bytes)")
  if video[:4] == b"RIFF" and len(video) >= 12:
    (declared,) = struct.unpack_from("<I", video, 4)
    if len(video) < declared + 8:
      raise EncodeError(
          f"truncated AVI: RIFF header declares {declared + 8} bytes, file has {len(video)}"
      )


def encode_jpeg_frames(
    video: bytes,
    name: str = "video.avi",
    recipe=None,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
) -> list[bytes]:
  """Re-encodes a video as JPEG frames.

  Args:
    video: the encoded video file's bytes (AVI for UCF101).
    name: file name for the temporary input (its extension helps ffmpeg
      probe) and for error messages.
    recipe: an `encoding_recipes.EncodingRecipe`; None: the protocol's,
      `encoding_recipes.UCF101`.
    start_s, end_s: a segment of the video in seconds, cut before
      re-encoding; only with a recipe.

  Returns:
    One JPEG image (bytes exactly as ffmpeg writes them) per output frame;
    without a recipe at 25 fps for at most the first 20 s.

  Raises:
    EncodeError: the video is empty, truncated or not decodable, or no frame
      came out; the message includes the tail of ffmpeg's stderr.
  """
  if recipe is None and (start_s is not None or end_s is not None):
    raise ValueError("a segment needs an encoding recipe")
  try:
    check_avi_container(video)
  except EncodeError as e:
    raise EncodeError(f"{name}: {e}") from None
  with tempfile.TemporaryDirectory(prefix="mmv_encode_") as tmp:
    input_path = os.path.join(tmp, os.path.basename(name) or "video")
    with open(input_path, "wb") as f:
      f.write(video)
    if recipe is None:
      recipe = encoding_recipes.UCF101
    arguments = recipe.ffmpeg_args(input_path, start_s=start_s, end_s=end_s)
    try:
      result = subprocess.run(
          [ffmpeg_executable(), *arguments],
          capture_output=True,
          timeout=ENCODE_TIMEOUT_S,
          check=False,
      )
    except subprocess.TimeoutExpired as e:
      raise EncodeError(f"{name}: ffmpeg ran over {ENCODE_TIMEOUT_S}s") from e
  stderr = result.stderr.decode("utf-8", "replace").strip()[-_STDERR_TAIL_CHARS:]
  if result.returncode != 0:
    raise EncodeError(f"{name}: ffmpeg exited with {result.returncode}: {stderr}")
  if not result.stdout:
    raise EncodeError(f"{name}: ffmpeg wrote no frames: {stderr or 'no error output'}")
  return split_jpeg_stream(result.stdout)
