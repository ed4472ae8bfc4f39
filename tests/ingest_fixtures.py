"""Helpers for ingestion tests: the tiny synthetic UCF101's settings, a
Range-honouring HTTP server with injectable faults, GCS uploads, and helpers
that craft malformed ZIP archives. The fixtures built on them are in
conftest.py."""

import collections
import dataclasses
import glob
import hashlib
import http.server
import io
import json
import os
import re
import socket
import struct
import threading
import time
import warnings
import zipfile
import zlib

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from mmv_core.video import encode
from pipelines import ingest
from pipelines import ingest_cache
from pipelines import ingest_fetch
from pipelines.common import FAILURES, failure

# Tiny videos keep ffmpeg fast: 3 classes x 3 videos of 64x48 at 10 fps for 1 s.
TINY = dict(
    num_classes=3,
    videos_per_class=3,
    clips_per_group=1,
    width=64,
    height=48,
    fps=10.0,
    duration_s=1.0,
    include_handstand_pushups=True,
)


# A trickled body arrives at 2 KB/s, in pieces small and frequent enough that
# no single socket read ever times out.
TRICKLE_PIECE_BYTES = 200
TRICKLE_PIECE_INTERVAL_S = 0.1


class _RangeHandler(http.server.BaseHTTPRequestHandler):
  """Serves `server.files` with byte ranges; `server.faults[(path, start)]` holds
  faults ("503", "drop" or "trickle") that the next requests for that range
  start get."""

  protocol_version = "HTTP/1.1"

  def log_message(self, *args):  # Keep test output quiet.
    pass

  def do_GET(self):  # pylint: disable=invalid-name
    content = self.server.files.get(self.path)
    if content is None:
      self.send_error(404)
      return
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
    start = int(match[1]) if match else 0
    end = min(int(match[2]) if match and match[2] else len(content) - 1, len(content) - 1)
    self.server.requests.append((self.path, start, end))
    faults = self.server.faults.get((self.path, start))
    fault = faults.popleft() if faults else None
    if fault == "503":
      self.send_error(503, "Service Unavailable")
      return
    body = content[start : end + 1]
    self.send_response(206 if match else 200)
    if match:
      self.send_header("Content-Range", f"bytes {start}-{end}/{len(content)}")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if fault == "drop":
      # Headers promise the whole range; half of it arrives, then the connection dies.
      self.wfile.write(body[: len(body) // 2])
      self.wfile.flush()
      self.connection.shutdown(socket.SHUT_RDWR)
      self.close_connection = True
      return
    if fault == "trickle":
      self.close_connection = True
      try:
        for start in range(0, len(body), TRICKLE_PIECE_BYTES):
          self.wfile.write(body[start : start + TRICKLE_PIECE_BYTES])
          self.wfile.flush()
          time.sleep(TRICKLE_PIECE_INTERVAL_S)
      except OSError:  # The client gave up.
        pass
      return
    self.wfile.write(body)


class RangeServer:
  """An HTTP server on 127.0.0.1 serving files from memory."""

  def __init__(self):
    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    self._server.daemon_threads = True
    self._server.files = {}
    self._server.faults = collections.defaultdict(collections.deque)
    self._server.requests = []
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
    self._thread.start()

  def serve(self, name: str, content: bytes) -> str:
    self._server.files[f"/{name}"] = content
    return f"http://127.0.0.1:{self._server.server_port}/{name}"

  def inject(self, name: str, start: int, *faults: str) -> None:
    self._server.faults[(f"/{name}", start)].extend(faults)

  @property
  def requests(self) -> list[tuple[str, int, int]]:
    return self._server.requests

  def close(self) -> None:
    self._server.shutdown()
    self._server.server_close()


def upload_to_gcs(bucket: str, name: str, content: bytes) -> str:
  from google.cloud import storage  # pylint: disable=import-outside-toplevel

  client = storage.Client.create_anonymous_client()
  client.bucket(bucket).blob(name).upload_from_string(content)
  return f"gs://{bucket}/{name}"


def read_file(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def zip_members(path: str) -> dict[str, bytes]:
  with zipfile.ZipFile(path) as archive:
    return {name: archive.read(name) for name in archive.namelist()}


def directory_listing(path: str) -> list[str]:
  return sorted(
      os.path.relpath(os.path.join(root, f), path)
      for root, _, files in os.walk(path)
      for f in files
  )


def frame_digest(frames) -> str:
  return hashlib.sha256(b"".join(hashlib.sha256(f).digest() for f in frames)).hexdigest()


def expected_videos(members: dict[str, bytes]) -> dict[str, str]:
  """Video id -> digest of the protocol's JPEG frames, encoded straight from the AVIs."""
  return {
      name.split("/")[-1].removesuffix(".avi"): frame_digest(encode.encode_jpeg_frames(avi))
      for name, avi in members.items()
  }


def _video_row(video) -> str:
  return json.dumps(
      {
          "video_id": video.video_id,
          "label": video.label,
          "label_name": video.label_name,
          "digest": frame_digest(video.frames),
          "num_frames": video.num_frames,
      }
  )


def _read_rows(prefix: str) -> list[dict]:
  rows = []
  for path in glob.glob(prefix + "*"):
    with open(path) as f:
      rows += [json.loads(line) for line in f if line.strip()]
  return rows


@dataclasses.dataclass
class IngestRun:
  videos: dict[str, dict]  # video id -> row (label, label_name, digest, num_frames)
  failures: dict[str, dict]  # video id -> failure record
  counters: dict[str, int]


def _read_frames(ref):
  """A video's frames as the embedding job reads them, or its failure at `cache`."""
  try:
    yield ingest_cache.read_cached_video(ref)
  except ingest_fetch.StageFailure as e:
    yield beam.pvalue.TaggedOutput(FAILURES, failure(ref.video_id, e.stage, e.reason))


def run_ingest(
    video_zip: str,
    splits_zip: str,
    work_dir: str,
    out_dir: str,
    beam_args: tuple[str, ...] = ("--runner=FnApiRunner",),
    **ingest_kwargs,
) -> IngestRun:
  """Runs `Ingest`, reads each video's frames as the embedding job does, and collects
  the outputs through text files in `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  videos_prefix = os.path.join(out_dir, "videos")
  failures_path = os.path.join(out_dir, "failures.jsonl")
  pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
  result = pipeline | ingest.Ingest(
      video_zip, splits_zip, work_dir, expected_split_counts=None, **ingest_kwargs
  )
  read = result.videos | "ReadFrames" >> beam.ParDo(_read_frames).with_outputs(
      FAILURES, main="videos"
  )
  _ = read.videos | "Rows" >> beam.Map(_video_row) | beam.io.WriteToText(videos_prefix)
  _ = (result.failures, read[FAILURES]) | beam.Flatten() | ingest.WriteFailures(failures_path)
  run = pipeline.run()
  run.wait_until_finish()
  rows = _read_rows(videos_prefix)
  videos = {row["video_id"]: row for row in rows}
  assert len(videos) == len(rows), "a video came out twice"
  failures = {r["video_id"]: r for r in _read_rows(failures_path)}
  return IngestRun(videos=videos, failures=failures, counters=ingest.counters(run))


# ---- Crafted archives ----

# Central directory header fields: name -> (offset in the header, struct format).
_CENTRAL_FIELDS = {
    "flags": (8, "<H"),
    "method": (10, "<H"),
    "crc32": (16, "<I"),
    "compressed_size": (20, "<I"),
    "file_size": (24, "<I"),
    "header_offset": (42, "<I"),
}
_CENTRAL_SIGNATURE = b"PK\x01\x02"


def central_entry_offsets(data: bytes, name: str) -> list[int]:
  """Offsets of the central directory headers naming `name`, in directory order."""
  offsets = []
  position = data.find(_CENTRAL_SIGNATURE)
  while position >= 0:
    name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, position + 28)
    if data[position + 46 : position + 46 + name_length] == name.encode():
      offsets.append(position)
    position = data.find(
        _CENTRAL_SIGNATURE, position + 46 + name_length + extra_length + comment_length
    )
  return offsets


def patch_central_entry(data: bytes, name: str, **fields: int) -> bytes:
  """`data` with the central directory header of `name` given new field values
  (flags, method, crc32, compressed_size, file_size, header_offset)."""
  (position,) = central_entry_offsets(data, name)
  patched = bytearray(data)
  for field, value in fields.items():
    offset, fmt = _CENTRAL_FIELDS[field]
    struct.pack_into(fmt, patched, position + offset, value)
  return bytes(patched)


def deflate_zeros(num_mib: int) -> bytes:
  """A raw deflate stream that inflates to `num_mib` MiB of zeros, about 1/1000 of that.

  Built without compressing the whole: after a full flush the compressor starts
  afresh, so the deflated form of each further MiB is the same bytes.
  """
  compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
  one_mib = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
  return one_mib * num_mib + compressor.flush()


def zip_bytes(
    members: list[tuple[str, bytes]],
    compression: int = zipfile.ZIP_STORED,
    extra: dict[str, bytes] | None = None,
) -> bytes:
  """A ZIP of `members` (name, content) in order; repeated names are kept.

  `extra` gives members' extra fields, written as they are (both headers).
  """
  buffer = io.BytesIO()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # zipfile warns about duplicate names.
    with zipfile.ZipFile(buffer, "w", compression) as archive:
      for name, content in members:
        info = zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0))
        info.compress_type = compression
        info.extra = (extra or {}).get(name, b"")
        archive.writestr(info, content)
  return buffer.getvalue()


def video_id(member_name: str) -> str:
  return member_name.split("/")[-1].removesuffix(".avi")
