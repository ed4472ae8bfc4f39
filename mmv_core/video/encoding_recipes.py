"""Encoding recipes: how a dataset's videos become JPEG frames, as data.

Stage: ingestion, where a fetched video is re-encoded. A recipe is the ffmpeg
output arguments that decide the frames (rate, size, length, JPEG quality);
`EncodingRecipe.ffmpeg_args` wraps them into a whole command line that reads
one input, optionally cut to a segment, and writes the JPEG frames to a pipe.

- `ucf101`: the MMV protocol's frames (docs/protocol.md, "Frames"): JPEG
  quality 2, 25 fps, first 20 s, native size. Its arguments are
  `protocol_output_args()`, which ingestion runs today.
- `hmdb51`: the frames of dmvr's example that reproduces the paper's HMDB51
  numbers: first 20 s, 10 fps, scaled so the smaller side is 256, the JPEG
  encoder's default quality.

`EncodingRecipe.key` names the recipe and a hash of those arguments, so
frames of two recipes never share a cache entry, and editing a recipe's
arguments gives it a new key.
"""

import dataclasses
import hashlib
import json

# Frames go to stdout as concatenated JPEG images: `mjpeg` is the encoder the
# image2 muxer picks for `.jpeg` files, so the bytes are those ffmpeg would
# write as files (`mmv_core.video.encode.split_jpeg_stream` cuts them apart).
JPEG_PIPE_ARGS = ("-f", "image2pipe", "-c:v", "mjpeg")
# Settings that change what ffmpeg prints, never the frames.
_QUIET_ARGS = ("-nostdin", "-hide_banner", "-loglevel", "error")
_KEY_HASH_CHARS = 12

# The protocol's frames (docs/protocol.md, "Frames").
JPEG_QSCALE = 2
FRAME_RATE = 25
MAX_DURATION = "00:00:20"

HMDB51_FRAME_RATE = 10
HMDB51_MIN_SIDE = 256
HMDB51_MAX_DURATION_S = 20


def protocol_output_args() -> list[str]:
  """ffmpeg output options of the protocol: JPEG quality 2, 25 fps, first 20 s."""
  return ["-qscale:v", str(JPEG_QSCALE), "-r", str(FRAME_RATE), "-t", MAX_DURATION]


class UnknownRecipeError(ValueError):
  """No encoding recipe has the asked-for name."""


@dataclasses.dataclass(frozen=True)
class EncodingRecipe:
  """A named set of ffmpeg output arguments.

  Attributes:
    name: the recipe's name, e.g. `hmdb51`.
    output_args: ffmpeg options between the input and the JPEG pipe.
    description: one line for help texts and run records.
  """

  name: str
  output_args: tuple[str, ...]
  description: str

  @property
  def key(self) -> str:
    """`<name>-<12 hex digits of sha256>` of every argument that shapes the frames."""
    arguments = json.dumps([*self.output_args, *JPEG_PIPE_ARGS]).encode()
    return f"{self.name}-{hashlib.sha256(arguments).hexdigest()[:_KEY_HASH_CHARS]}"

  def ffmpeg_args(
      self,
      input_path: str,
      output: str = "pipe:1",
      *,
      start_s: float | None = None,
      end_s: float | None = None,
  ) -> list[str]:
    """The ffmpeg command line after the executable.

    Args:
      input_path: the video file to read.
      output: where the JPEG stream goes; stdout by default.
      start_s, end_s: a segment of the input in seconds (None: its start,
        its end). They are input options, so ffmpeg cuts the segment before
        re-encoding: the recipe's frame rate and 20 s limit count from
        `start_s`, and seeking skips straight to it in long videos (decoding
        from the keyframe before it, so the cut is frame-accurate).
    """
    segment = []
    if start_s is not None:
      segment += ["-ss", _ffmpeg_seconds(start_s)]
    if end_s is not None:
      segment += ["-to", _ffmpeg_seconds(end_s)]
    return [*_QUIET_ARGS, *segment, "-i", input_path, *self.output_args, *JPEG_PIPE_ARGS, output]


def _ffmpeg_seconds(seconds: float) -> str:
  # ffmpeg's time syntax has no exponent (`repr` may write one); it resolves
  # microseconds.
  return f"{seconds:.6f}"


UCF101 = EncodingRecipe(
    name="ucf101",
    output_args=tuple(protocol_output_args()),
    description="MMV protocol: JPEG quality 2, 25 fps, first 20 s, native size",
)

HMDB51 = EncodingRecipe(
    name="hmdb51",
    # dmvr's filter chain: keep the first 20 s, resample to 10 fps, scale the
    # width to (iw/min(iw,ih))*256 with the height following the aspect
    # ratio (-1), so the smaller side is 256. `\,` keeps the comma inside
    # min() from separating filters. No -qscale: the encoder's default quality.
    output_args=(
        "-vf",
        f"trim=start=0:end={HMDB51_MAX_DURATION_S},fps=fps={HMDB51_FRAME_RATE},"
        f"scale=(iw/min(iw\\,ih))*{HMDB51_MIN_SIDE}:-1",
    ),
    description="dmvr's HMDB51: first 20 s, 10 fps, smaller side 256, default JPEG quality",
)

RECIPES = {recipe.name: recipe for recipe in (UCF101, HMDB51)}


def get(name: str) -> EncodingRecipe:
  """The recipe called `name`; UnknownRecipeError lists the known names."""
  try:
    return RECIPES[name]
  except KeyError:
    raise UnknownRecipeError(
        f"unknown encoding recipe {name!r}; known: {', '.join(sorted(RECIPES))}"
    ) from None
