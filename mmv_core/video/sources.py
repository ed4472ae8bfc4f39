"""Reading bytes from local paths, `gs://` objects and `http(s)://` URLs.

Stage: the lowest layer of ingestion. Whole reads (`read_bytes`), sizes
(`size`) and byte ranges (`read_range`) for three kinds of location:

- `gs://bucket/object`: google-cloud-storage, anonymous client first (the
  pinned mirror is a public bucket), falling back to default credentials when
  the object is not public. `STORAGE_EMULATOR_HOST` points it at an emulator.
- `http://`, `https://`: HTTP `Range` requests.
- anything else: a local path (or another Beam filesystem for whole reads).

Bounds on every byte range (HTTP or GCS) and every HTTP read:

- An answer that ignores `Range` is an error, not a silent 7 GB download. Over
  HTTP its status is refused before any of its body is read; the GCS client
  reads the status itself, so there the answer is refused as soon as it
  runs past the range asked for (at most 8 KiB past it).
- A body is never read past the bytes asked for.
- Each request has an overall deadline, `READ_DEADLINE_S` plus
  `READ_DEADLINE_S_PER_MB` for each MB it carries (the range's length, or the
  announced or received size of a whole read), on top of the per-read socket
  timeout `HTTP_TIMEOUT_S`: a server trickling bytes is cut off when the
  deadline passes (checked as each piece arrives, so a request ends at most
  one socket timeout after its deadline).

GCS sizes (one small metadata request) and whole reads of `gs://` objects
(through Beam's filesystem) keep their clients' own per-request timeouts and
have no overall deadline.

Transient failures (HTTP 5xx/408/429, dropped connections, short reads,
deadlines passed) are retried with exponential backoff; everything else raises
`SourceError` at once.
"""

import contextlib
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
# A request's overall deadline: a fixed allowance (connection, headers, a slow
# start) and 10 s per MB, i.e. an average of at least 100 kB/s.
READ_DEADLINE_S = 60.0
READ_DEADLINE_S_PER_MB = 10.0
RETRY_ATTEMPTS = 5
RETRY_INITIAL_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 20.0
_TRANSIENT_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# Bytes asked of an HTTP response per read; each read returns what one socket
# read brings, so the deadline is checked often however slow the server.
_READ_PIECE_BYTES = 1 << 20


class SourceError(IOError):
  """A location could not be read, or its content is not what was pinned."""


class TransientSourceError(SourceError):
  """A read failed in a way that may succeed when tried again."""


class UntrustedCertificateError(SourceError):
  """The server's TLS certificate failed verification."""


def retry(
    fn: Callable[[], _T],
    *,
    description: str,
    attempts: int | None = None,
    initial_delay_s: float | None = None,
    on_retry: Callable[[TransientSourceError], None] | None = None,
) -> _T:
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
        raise TransientSourceError(f"{description}: gave up after {attempts} attempts ({e})") from e
      if on_retry is not None:
        on_retry(e)
      logging.info("%s: attempt %d failed (%s); retrying in %.1fs", description, attempt, e, delay)
      time.sleep(delay * random.uniform(0.5, 1.0))
      delay = min(delay * 2, RETRY_MAX_DELAY_S)
  raise AssertionError("unreachable")


def _is_http(location: str) -> bool:
  return location.startswith(("http://", "https://"))


def _is_gcs(location: str) -> bool:
  return location.startswith("gs://")


def _deadline_s(num_bytes: int) -> float:
  """Seconds a request carrying `num_bytes` may take, from its start to its last byte."""
  return READ_DEADLINE_S + READ_DEADLINE_S_PER_MB * num_bytes / 1e6


class _Body:
  """A response body as it arrives, held to a byte limit and to its request's deadline.

  HTTP reads add pieces with `write`; the GCS client writes into it as into a
  file.

  Args:
    location: names the object in errors.
    started: `time.monotonic()` when the request was sent.
    max_bytes: the most bytes the body may hold; None for no limit.
    expected_bytes: the size the body should have (sets the deadline), 0 if
      unknown; the deadline grows with what arrives past it.
  """

  def __init__(self, location: str, started: float, max_bytes: int | None, expected_bytes: int):
    self._location = location
    self._started = started
    self._max_bytes = max_bytes
    self._expected_bytes = expected_bytes
    self._pieces: list[bytes] = []
    self._received = 0

  def room(self) -> int:
    """How many bytes to ask for next: a piece, or less near `max_bytes`."""
    if self._max_bytes is None:
      return _READ_PIECE_BYTES
    return min(_READ_PIECE_BYTES, self._max_bytes - self._received)

  def write(self, piece: bytes) -> int:
    if self._max_bytes is not None and self._received + len(piece) > self._max_bytes:
      raise SourceError(
          f"{self._location}: the answer runs past the {self._max_bytes} "
          "bytes asked for: the server ignored the Range header"
      )
    self._pieces.append(piece)
    self._received += len(piece)
    deadline_s = _deadline_s(max(self._expected_bytes, self._received))
    if time.monotonic() - self._started > deadline_s:
      raise TransientSourceError(
          f"{self._location}: read deadline of {deadline_s:.1f} s passed with "
          f"{self._received} bytes received (server too slow)"
      )
    return len(piece)

  def seek(self, *_):
    # The GCS client rewinds its target when the server sends the whole object
    # decompressed instead of the range (decompressive transcoding).
    raise SourceError(
        f"{self._location}: the server ignored the Range header "
        "(it sends the whole object, decompressed)"
    )

  def getvalue(self) -> bytes:
    return b"".join(self._pieces)


# ---- HTTP ----


def _http_error(location: str, e: Exception) -> SourceError:
  if isinstance(e, urllib.error.HTTPError):
    kind = TransientSourceError if e.code in _TRANSIENT_HTTP_STATUS else SourceError
    return kind(f"{location}: HTTP {e.code} {e.reason}")
  if isinstance(e, urllib.error.URLError) and isinstance(e.reason, ssl.SSLCertVerificationError):
    return UntrustedCertificateError(f"{location}: TLS certificate not trusted ({e.reason})")
  if isinstance(
      e, (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
  ):
    return TransientSourceError(f"{location}: {type(e).__name__}: {e}")
  return SourceError(f"{location}: {type(e).__name__}: {e}")


@contextlib.contextmanager
def _http_response(location: str, headers: dict[str, str], context: ssl.SSLContext | None = None):
  """The open response to a GET, its body unread; any error on the way, the
  body's included, becomes a `SourceError`."""
  request = urllib.request.Request(location, headers=headers)
  try:
    with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S, context=context) as response:
      yield response
  except SourceError:
    raise
  except Exception as e:
    raise _http_error(location, e) from e


def _read_http_body(response, body: _Body) -> bytes:
  while (room := body.room()) > 0 and (piece := response.read1(room)):
    body.write(piece)
  return body.getvalue()


def _check_partial_content(response, location: str, start: int) -> re.Match:
  """The Content-Range of a 206 answer for bytes from `start`.

  Any other answer is refused from its status line and headers, before its
  body is read: a server that ignores `Range` sends the whole object.
  """
  if response.status != 206:
    raise SourceError(f"{location}: server ignored the Range header (HTTP {response.status})")
  content_range = response.headers.get("Content-Range", "")
  match = _CONTENT_RANGE.fullmatch(content_range)
  if not match or int(match[1]) != start:
    raise SourceError(f"{location}: unexpected Content-Range {content_range!r} for bytes {start}-")
  return match


def _http_get(location: str, context: ssl.SSLContext | None = None) -> bytes:
  started = time.monotonic()
  with _http_response(location, {}, context) as response:
    announced = int(response.headers.get("Content-Length") or 0)
    return _read_http_body(
        response, _Body(location, started, max_bytes=None, expected_bytes=announced)
    )


def _http_range(location: str, start: int, length: int) -> bytes:
  started = time.monotonic()
  with _http_response(location, {"Range": f"bytes={start}-{start + length - 1}"}) as response:
    _check_partial_content(response, location, start)
    return _read_http_body(
        response, _Body(location, started, max_bytes=length, expected_bytes=length)
    )


def _http_size(location: str) -> int:
  # A one-byte range answers with the total size and works where HEAD is
  # not allowed (signed URLs are often GET-only). Its body is never read.
  with _http_response(location, {"Range": "bytes=0-0"}) as response:
    match = _check_partial_content(response, location, 0)
  if match[3] == "*":
    raise SourceError(
        f"{location}: server does not give the object's size (Content-Range {match[0]!r})"
    )
  return int(match[3])


# ---- GCS ----


@functools.cache
def _gcs_client(anonymous: bool):
  from google.cloud import storage  # Heavy import, only where gs:// is used.

  return storage.Client.create_anonymous_client() if anonymous else storage.Client()


def _gcs_blob(location: str, anonymous: bool):
  """The `gs://bucket/object` at `location`, through the anonymous or the credentialed client."""
  bucket_name, _, object_name = location.removeprefix("gs://").partition("/")
  return _gcs_client(anonymous).bucket(bucket_name).blob(object_name)


def _gcs_call(location: str, action: Callable) -> _T:
  """Runs `action(blob)` with the anonymous client, then with credentials if denied."""
  from google.api_core import exceptions as gexc
  from google.auth import exceptions as auth_exceptions
  import requests

  for anonymous in (True, False):
    try:
      return action(_gcs_blob(location, anonymous))
    except auth_exceptions.GoogleAuthError as e:  # E.g. no credentials on this machine.
      raise SourceError(f"{location}: access denied, and no usable credentials ({e})") from e
    except (gexc.Unauthorized, gexc.Forbidden) as e:
      if not anonymous:
        raise SourceError(f"{location}: access denied ({e})") from e
    except gexc.NotFound as e:
      raise SourceError(f"{location}: not found") from e
    except (
        gexc.ServerError,
        gexc.TooManyRequests,
        gexc.RequestRangeNotSatisfiable,
        requests.exceptions.ConnectionError,
        requests.exceptions.ChunkedEncodingError,
        ConnectionError,
        TimeoutError,
    ) as e:
      raise TransientSourceError(f"{location}: {type(e).__name__}: {e}") from e
    except gexc.GoogleAPIError as e:
      raise SourceError(f"{location}: {e}") from e
  raise AssertionError("unreachable")


def _gcs_range(location: str, start: int, length: int) -> bytes:
  started = time.monotonic()

  def download(blob) -> bytes:
    body = _Body(location, started, max_bytes=length, expected_bytes=length)
    # Our own `retry` wraps this; the client's built-in retry would multiply it.
    blob.download_to_file(body, start=start, end=start + length - 1, checksum=None, retry=None)
    return body.getvalue()

  return _gcs_call(location, download)


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


def read_range(
    location: str,
    start: int,
    length: int,
    *,
    on_retry: Callable[[TransientSourceError], None] | None = None,
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

  return retry(read_checked, description=f"{location}[{start}:{start + length}]", on_retry=on_retry)


def _read_whole(location: str, verify_tls: bool = True) -> bytes:
  if _is_http(location):
    context = None if verify_tls else ssl._create_unverified_context()  # pylint: disable=protected-access
    return retry(lambda: _http_get(location, context), description=location)
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
    logging.warning(
        "%s; retrying without certificate verification, "
        "the content is checked against its pinned sha256",
        e,
    )
    data = _read_whole(location, verify_tls=False)
  if expected_sha256 is not None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
      raise SourceError(f"{location}: sha256 is {actual}, expected {expected_sha256}")
  return data


# ---- Exclusive creation ----


def create_new(location: str, data: bytes) -> None:
  """Writes `data` to a new file or `gs://` object; FileExistsError if it exists.

  Atomic: of several callers at once, exactly one succeeds (O_EXCL locally,
  the `if_generation_match=0` precondition on GCS). Local parent folders are
  created.
  """
  if _is_gcs(location):
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exceptions

    try:
      _gcs_blob(location, anonymous=False).upload_from_string(data, if_generation_match=0)
    except gexc.PreconditionFailed:
      raise FileExistsError(location) from None
    except (gexc.GoogleAPIError, auth_exceptions.GoogleAuthError) as e:
      raise SourceError(f"{location}: {e}") from e
    return
  os.makedirs(os.path.dirname(os.path.abspath(location)), exist_ok=True)
  with open(location, "xb") as f:
    f.write(data)
