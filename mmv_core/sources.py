"""Reading bytes from local paths, `gs://` objects and `http(s)://` URLs.

Stage: the lowest layer of ingestion. Whole reads (`read_bytes`), sizes
(`size`) and byte ranges (`read_range`) for three kinds of location:

- `gs://bucket/object`: google-cloud-storage, anonymous client first (the
  pinned mirror is a public bucket), falling back to default credentials when
  the object is not public. `STORAGE_EMULATOR_HOST` points it at an emulator.
- `http://`, `https://`: HTTP `Range` requests; a server that ignores `Range`
  is an error, not a silent 7 GB download.
- anything else: a local path (or another Beam filesystem for whole reads).

Transient failures (HTTP 5xx/408/429, dropped connections, short reads) are
retried with exponential backoff; everything else raises `SourceError` at once.
"""

import functools
import hashlib
import http.client
import logging
import os
import random
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeVar

from apache_beam.io.filesystems import FileSystems

_T = TypeVar("_T")

HTTP_TIMEOUT_S = 60
RETRY_ATTEMPTS = 5
RETRY_INITIAL_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 20.0
_TRANSIENT_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class SourceError(IOError):
  """A location could not be read, or its content is not what was pinned."""


class TransientSourceError(SourceError):
  """A read failed in a way that may succeed when tried again."""


class UntrustedCertificateError(SourceError):
  """The server's TLS certificate failed verification."""


def retry(fn: Callable[[], _T], *, description: str,
          attempts: int | None = None,
          initial_delay_s: float | None = None,
          on_retry: Callable[[TransientSourceError], None] | None = None) -> _T:
  """Calls `fn`, retrying `TransientSourceError` with jittered exponential backoff.

  `attempts` and `initial_delay_s` default to `RETRY_ATTEMPTS` and
  `RETRY_INITIAL_DELAY_S` as they are at call time. Raises the last
  `TransientSourceError` (its message says how many attempts were made) once
  all attempts have failed; other errors pass through.
  """
  attempts = RETRY_ATTEMPTS if attempts is None else attempts
  delay = RETRY_INITIAL_DELAY_S if initial_delay_s is None else initial_delay_s
  for attempt in range(1, attempts + 1):
    try:
      return fn()
    except TransientSourceError as e:
      if attempt == attempts:
        raise TransientSourceError(
            f"{description}: gave up after {attempts} attempts ({e})") from e
      if on_retry is not None:
        on_retry(e)
      logging.info("%s: attempt %d failed (%s); retrying in %.1fs",
                   description, attempt, e, delay)
      time.sleep(delay * random.uniform(0.5, 1.0))
      delay = min(delay * 2, RETRY_MAX_DELAY_S)
  raise AssertionError("unreachable")


def _is_http(location: str) -> bool:
  return location.startswith(("http://", "https://"))


def _is_gcs(location: str) -> bool:
  return location.startswith("gs://")


# ---- HTTP ----

def _http_error(location: str, e: Exception) -> SourceError:
  if isinstance(e, urllib.error.HTTPError):
    kind = TransientSourceError if e.code in _TRANSIENT_HTTP_STATUS else SourceError
    return kind(f"{location}: HTTP {e.code} {e.reason}")
  if isinstance(e, urllib.error.URLError) and isinstance(
      e.reason, ssl.SSLCertVerificationError):
    return UntrustedCertificateError(
        f"{location}: TLS certificate not trusted ({e.reason})")
  if isinstance(e, (urllib.error.URLError, http.client.HTTPException,
                    ConnectionError, TimeoutError)):
    return TransientSourceError(f"{location}: {type(e).__name__}: {e}")
  return SourceError(f"{location}: {type(e).__name__}: {e}")


def _http_get(location: str, headers: dict[str, str],
              context: ssl.SSLContext | None = None
              ) -> tuple[int, dict[str, str], bytes]:
  request = urllib.request.Request(location, headers=headers)
  try:
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S,
                                context=context) as response:
      return response.status, dict(response.headers), response.read()
  except Exception as e:
    raise _http_error(location, e) from e


def _http_range(location: str, start: int, length: int) -> bytes:
  status, headers, body = _http_get(
      location, {"Range": f"bytes={start}-{start + length - 1}"})
  if status != 206:
    raise SourceError(f"{location}: server ignored the Range header (HTTP {status})")
  match = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", ""))
  if not match or int(match[1]) != start:
    raise SourceError(f"{location}: unexpected Content-Range "
                      f"{headers.get('Content-Range')!r} for bytes {start}-")
  return body


def _http_size(location: str) -> int:
  # A one-byte range answers with the total size and works where HEAD is
  # not allowed (signed URLs are often GET-only).
  status, headers, _ = _http_get(location, {"Range": "bytes=0-0"})
  match = _CONTENT_RANGE.fullmatch(headers.get("Content-Range", ""))
  if status != 206 or not match or match[3] == "*":
    raise SourceError(f"{location}: server does not serve byte ranges "
                      f"(HTTP {status}, Content-Range {headers.get('Content-Range')!r})")
  return int(match[3])


# ---- GCS ----

@functools.cache
def _gcs_client(anonymous: bool):
  from google.cloud import storage  # Heavy import, only where gs:// is used.
  return storage.Client.create_anonymous_client() if anonymous else storage.Client()


def _gcs_call(location: str, action: Callable) -> _T:
  """Runs `action(blob)` with the anonymous client, then with credentials if denied."""
  from google.api_core import exceptions as gexc
  import requests
  bucket_name, _, object_name = location.removeprefix("gs://").partition("/")
  for anonymous in (True, False):
    blob = _gcs_client(anonymous).bucket(bucket_name).blob(object_name)
    try:
      return action(blob)
    except (gexc.Unauthorized, gexc.Forbidden) as e:
      if not anonymous:
        raise SourceError(f"{location}: access denied ({e})") from e
    except gexc.NotFound as e:
      raise SourceError(f"{location}: not found") from e
    except (gexc.ServerError, gexc.TooManyRequests, gexc.RequestRangeNotSatisfiable,
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError, ConnectionError,
            TimeoutError) as e:
      raise TransientSourceError(f"{location}: {type(e).__name__}: {e}") from e
    except gexc.GoogleAPIError as e:
      raise SourceError(f"{location}: {e}") from e
  raise AssertionError("unreachable")


def _gcs_range(location: str, start: int, length: int) -> bytes:
  # Our own `retry` wraps this; the client's built-in retry would multiply it.
  return _gcs_call(location, lambda blob: blob.download_as_bytes(
      start=start, end=start + length - 1, checksum=None, retry=None))


def _gcs_size(location: str) -> int:
  def get_size(blob):
    blob.reload(retry=None)
    return blob.size
  return _gcs_call(location, get_size)


# ---- Local ----

def _local_range(location: str, start: int, length: int) -> bytes:
  try:
    with open(location, "rb") as f:
      f.seek(start)
      return f.read(length)
  except OSError as e:
    raise SourceError(f"{location}: cannot read ({e})") from e


def _local_size(location: str) -> int:
  try:
    return os.path.getsize(location)
  except OSError as e:
    raise SourceError(f"{location}: cannot stat ({e})") from e


# ---- Public API ----

def size(location: str) -> int:
  """Size of the object at `location` in bytes (with retries)."""
  if _is_http(location):
    read_size = _http_size
  elif _is_gcs(location):
    read_size = _gcs_size
  else:
    read_size = _local_size
  return retry(lambda: read_size(location), description=f"{location}: size")


def read_range(location: str, start: int, length: int, *,
               on_retry: Callable[[TransientSourceError], None] | None = None
               ) -> bytes:
  """Returns `length` bytes of `location` from offset `start`.

  Retries transient failures, including responses shorter than asked for (a
  connection dropped mid-body); `on_retry` is told about each retry.

  Raises:
    SourceError: the range cannot be read (`TransientSourceError` when
      retries ran out), or the object ends before `start + length`.
  """
  if start < 0 or length < 0:
    raise ValueError(f"{location}: bad range start={start} length={length}")
  if length == 0:
    return b""
  if _is_http(location):
    read = _http_range
  elif _is_gcs(location):
    read = _gcs_range
  else:
    read = _local_range

  def read_checked() -> bytes:
    data = read(location, start, length)
    if len(data) != length:
      error = TransientSourceError if (_is_http(location) or _is_gcs(location)) else SourceError
      raise error(f"{location}: got {len(data)} of {length} bytes at offset {start}")
    return data

  return retry(read_checked, description=f"{location}[{start}:{start + length}]",
               on_retry=on_retry)


def _read_whole(location: str, verify_tls: bool = True) -> bytes:
  if _is_http(location):
    context = None if verify_tls else ssl._create_unverified_context()  # pylint: disable=protected-access
    return retry(lambda: _http_get(location, {}, context)[2],
                 description=location)
  try:
    with FileSystems.open(location) as f:
      return f.read()
  except Exception as e:
    raise SourceError(f"{location}: cannot read ({e})") from e


def read_bytes(location: str, *, expected_sha256: str | None = None) -> bytes:
  """Returns the whole content of `location`, verified when a sha256 is given.

  Only for a checksum-pinned download, a TLS certificate failure falls back
  to an unverified connection: the sha256, not the certificate, is what we
  trust there (the split-list host has a history of broken certificates).
  """
  try:
    data = _read_whole(location)
  except UntrustedCertificateError as e:
    if expected_sha256 is None:
      raise
    logging.warning("%s; retrying without certificate verification, "
                    "the content is checked against its pinned sha256", e)
    data = _read_whole(location, verify_tls=False)
  if expected_sha256 is not None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
      raise SourceError(
          f"{location}: sha256 is {actual}, expected {expected_sha256}")
  return data


# ---- Exclusive creation ----

def create_new(location: str, data: bytes) -> None:
  """Writes `data` to a new file or `gs://` object; FileExistsError if it exists.

  Atomic: of several callers at once, exactly one succeeds (O_EXCL locally,
  the `if_generation_match=0` precondition on GCS). Local parent folders are
  created.
  """
  if location.startswith("gs://"):
    from google.api_core import exceptions as gexc
    bucket_name, _, object_name = location.removeprefix("gs://").partition("/")
    blob = _gcs_client(anonymous=False).bucket(bucket_name).blob(object_name)
    try:
      blob.upload_from_string(data, if_generation_match=0)
    except gexc.PreconditionFailed:
      raise FileExistsError(location) from None
    except gexc.GoogleAPIError as e:
      raise SourceError(f"{location}: {e}") from e
    return
  os.makedirs(os.path.dirname(os.path.abspath(location)), exist_ok=True)
  with open(location, "xb") as f:
    f.write(data)
