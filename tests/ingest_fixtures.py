"""Fixtures for ingestion tests: tiny synthetic UCF101, a Range-honouring HTTP
server with injectable faults, and an in-process GCS emulator."""

import collections
import dataclasses
import glob
import hashlib
import http.server
import json
import os
import re
import socket
import threading
import zipfile

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from mmv_core import encode
from mmv_core import sources
from mmv_core import synthetic
from pipelines import ingest

# Tiny videos keep ffmpeg fast: 3 classes x 3 videos of 64x48 at 10 fps for 1 s.
TINY = dict(num_classes=3, videos_per_class=3, clips_per_group=1, width=64, height=48,
            fps=10.0, duration_s=1.0, include_handstand_pushups=True)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> synthetic.SyntheticDataset:
  return synthetic.write_dataset(str(tmp_path_factory.mktemp("tiny_ucf101")), **TINY)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
  """Serves `server.files` with byte ranges; `server.faults[(path, start)]` holds
  faults ("503" or "drop") that the next requests for that range start get."""

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
    body = content[start:end + 1]
    self.send_response(206 if match else 200)
    if match:
      self.send_header("Content-Range", f"bytes {start}-{end}/{len(content)}")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if fault == "drop":
      # Headers promise the whole range; half of it arrives, then the connection dies.
      self.wfile.write(body[:len(body) // 2])
      self.wfile.flush()
      self.connection.shutdown(socket.SHUT_RDWR)
      self.close_connection = True
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


@pytest.fixture
def range_server():
  server = RangeServer()
  yield server
  server.close()


@pytest.fixture
def gcs_emulator(monkeypatch):
  """Yields a bucket name on an in-process GCS emulator that both our client and
  Beam's gs:// filesystem use."""
  from gcp_storage_emulator import server as emulator  # pylint: disable=import-outside-toplevel
  from apache_beam.internal.gcp import auth  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  bucket = "mmv-test"
  server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.start()
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
  monkeypatch.setenv("NO_GCE_CHECK", "true")
  # Skip Beam's ~25 s credential lookup; it goes anonymous anyway (BEAM_NOTES.md).
  monkeypatch.setattr(auth._Credentials, "_credentials_init", True)  # pylint: disable=protected-access
  monkeypatch.setattr(auth._Credentials, "_credentials", None)  # pylint: disable=protected-access
  sources._gcs_client.cache_clear()  # pylint: disable=protected-access
  yield bucket
  sources._gcs_client.cache_clear()  # pylint: disable=protected-access
  server.stop()


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
  return sorted(os.path.relpath(os.path.join(root, f), path)
                for root, _, files in os.walk(path) for f in files)


def frame_digest(frames) -> str:
  return hashlib.sha256(b"".join(hashlib.sha256(f).digest() for f in frames)).hexdigest()


def expected_videos(members: dict[str, bytes]) -> dict[str, str]:
  """Video id -> digest of the protocol's JPEG frames, encoded straight from the AVIs."""
  return {name.split("/")[-1].removesuffix(".avi"): frame_digest(encode.encode_jpeg_frames(avi))
          for name, avi in members.items()}


def _video_row(video) -> str:
  return json.dumps({"video_id": video.video_id, "label": video.label,
                     "label_name": video.label_name, "digest": frame_digest(video.frames),
                     "num_frames": video.num_frames})


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


def run_ingest(video_zip: str, splits_zip: str, work_dir: str, out_dir: str,
               beam_args: tuple[str, ...] = ("--runner=FnApiRunner",), **ingest_kwargs
               ) -> IngestRun:
  """Runs `Ingest` and collects its outputs through text files in `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  videos_prefix = os.path.join(out_dir, "videos")
  failures_path = os.path.join(out_dir, "failures.jsonl")
  pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
  result = pipeline | ingest.Ingest(video_zip, splits_zip, work_dir,
                                    expected_split_counts=None, **ingest_kwargs)
  _ = result.videos | "Rows" >> beam.Map(_video_row) | beam.io.WriteToText(videos_prefix)
  _ = result.failures | ingest.WriteFailures(failures_path)
  run = pipeline.run()
  run.wait_until_finish()
  rows = _read_rows(videos_prefix)
  videos = {row["video_id"]: row for row in rows}
  assert len(videos) == len(rows), "a video came out twice"
  failures = {r["video_id"]: r for r in _read_rows(failures_path)}
  return IngestRun(videos=videos, failures=failures, counters=ingest.counters(run))
