"""One video file or URL to the frames the evaluation protocol sees.

The same steps as ingestion followed by the embedding job, for one video:
fetch the bytes (`sources.read_bytes`: local path, `gs://`, `http(s)://`),
re-encode them with the protocol's ffmpeg recipe (`encode.encode_jpeg_frames`:
JPEG quality 2, 25 fps, first 20 s) and decode the JPEGs to the pixels of
TensorFlow's decoder (`video.decode_jpeg_frames`). The frames are therefore exactly those
the pipelines cut clips from.
"""

import os
import urllib.parse

import numpy as np

from mmv_core.video import encode
from mmv_core.video import sources
from mmv_core import video


def _name_for_errors(location: str) -> str:
  """`location` without a URL's query string and fragment.

  A signed URL's query holds its signature, a secret that error messages
  must not repeat; it is also too long for the temporary file ffmpeg reads,
  which is named after this.
  """
  if location.startswith(("http://", "https://")):
    return urllib.parse.urlsplit(location)._replace(query="", fragment="").geturl()
  return location


def load_video(location: str | os.PathLike[str]) -> np.ndarray:
  """Reads a video and returns its frames after the protocol's re-encoding.

  Args:
    location: local path, `gs://bucket/object` or `http(s)://` URL of a video
      file ffmpeg can read (UCF101's are MPEG-4 AVIs).

  Returns:
    uint8 [T, H, W, 3] RGB frames at 25 fps, T <= 500 (20 s), H and W those of
    the source video.

  Raises:
    sources.SourceError: the location cannot be read (missing file, HTTP
      error, access denied); the message names it.
    encode.EncodeError: the bytes are not a video ffmpeg can decode (empty,
      truncated, another kind of file); the message names the location and
      ends with ffmpeg's own error.
  """
  location = os.fspath(location)
  try:
    data = sources.read_bytes(location)
  except sources.SourceError as e:
    # The reason is kept, the URL's query (a signed URL's secret) is not.
    raise sources.SourceError(str(e).replace(location, _name_for_errors(location))) from None
  jpegs = encode.encode_jpeg_frames(data, name=_name_for_errors(location))
  return video.decode_jpeg_frames(jpegs)
