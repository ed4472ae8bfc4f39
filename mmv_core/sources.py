"""Reading bytes from local paths, `gs://` objects and `https://` URLs."""

import hashlib
import urllib.request

from apache_beam.io.filesystems import FileSystems


class SourceError(IOError):
  """A location could not be read, or its content is not what was pinned."""


def read_bytes(location: str, *, expected_sha256: str | None = None) -> bytes:
  """Returns the whole content of `location`, verified when a sha256 is given."""
  try:
    if location.startswith(("http://", "https://")):
      with urllib.request.urlopen(location, timeout=60) as response:
        data = response.read()
    else:
      with FileSystems.open(location) as f:
        data = f.read()
  except Exception as e:
    raise SourceError(f"{location}: cannot read ({e})") from e
  if expected_sha256 is not None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
      raise SourceError(
          f"{location}: sha256 is {actual}, expected {expected_sha256}")
  return data
