"""load_video: one file or URL to the frames the pipelines embed."""

import datetime
import http.server
import ipaddress
import ssl
import threading

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ingest_fixtures import zip_members
from mmv_core.video import encode
from mmv_core import load_video
from mmv_core.video import sources
from mmv_core import video
from mmv_core.video import video_cache
from pipelines import common
from pipelines import ingest

LOCALHOST = "127.0.0.1"


@pytest.fixture(scope="module")
def ingested(tiny_dataset, tmp_path_factory):
  """(source AVI path, frames the ingestion and embedding path decode) of one video."""
  work_dir = str(tmp_path_factory.mktemp("work"))
  ingest.main(
      [
          f"--video_zip={tiny_dataset.video_zip}",
          f"--splits_zip={tiny_dataset.splits_zip}",
          f"--work_dir={work_dir}",
          "--no_count_check",
          *common.IN_PROCESS_RUNNER_ARGS,
      ]
  )
  video_id, entry = sorted(video_cache.read_index(work_dir).items())[0]
  [cached] = video_cache.read_shard(entry.shard, [video_id])
  [(member, avi)] = [
      (name, data)
      for name, data in zip_members(tiny_dataset.video_zip).items()
      if name.endswith(f"/{video_id}.avi")
  ]
  path = tmp_path_factory.mktemp("videos") / member.rsplit("/", 1)[-1]
  path.write_bytes(avi)
  return path, video.decode_jpeg_frames(cached.frames)


def test_local_file_gives_the_frames_ingestion_gives(ingested):
  path, ingested_frames = ingested
  frames = load_video(str(path))
  # 64x48 source at 10 fps for 1 s, re-encoded at the protocol's 25 fps.
  assert frames.dtype == np.uint8
  assert frames.shape == (25, 48, 64, 3)
  np.testing.assert_array_equal(frames, ingested_frames)


class _TlsServer:
  """An HTTPS server on 127.0.0.1, in a thread, serving files from memory."""

  def __init__(self, cert_path, key_path):
    files = self.files = {}

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):  # Keep test output quiet.
        pass

      def do_GET(self):  # pylint: disable=invalid-name
        content = files.get(self.path.split("?", 1)[0])
        if content is None:
          self.send_error(404)
          return
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    self._server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
    self._thread.start()

  def url(self, path: str) -> str:
    return f"https://{LOCALHOST}:{self._server.server_port}{path}"

  def close(self) -> None:
    self._server.shutdown()
    self._server.server_close()


def _write_self_signed_certificate(directory):
  """(certificate, key) PEM paths for 127.0.0.1, valid for a day."""
  key = ec.generate_private_key(ec.SECP256R1())
  name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOCALHOST)])
  now = datetime.datetime.now(datetime.timezone.utc)
  certificate = (
      x509.CertificateBuilder()
      .subject_name(name)
      .issuer_name(name)
      .public_key(key.public_key())
      .serial_number(x509.random_serial_number())
      .not_valid_before(now - datetime.timedelta(minutes=5))
      .not_valid_after(now + datetime.timedelta(days=1))
      .add_extension(
          x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOCALHOST))]),
          critical=False,
      )
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .sign(key, hashes.SHA256())
  )
  cert_path, key_path = directory / "cert.pem", directory / "key.pem"
  cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
  key_path.write_bytes(
      key.private_bytes(
          serialization.Encoding.PEM,
          serialization.PrivateFormat.PKCS8,
          serialization.NoEncryption(),
      )
  )
  return cert_path, key_path


@pytest.fixture
def https_server(tmp_path, monkeypatch):
  cert_path, key_path = _write_self_signed_certificate(tmp_path)
  # The client trusts exactly this certificate, as it would a real CA's.
  monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))
  monkeypatch.setattr(sources, "RETRY_ATTEMPTS", 1)
  server = _TlsServer(cert_path, key_path)
  yield server
  server.close()


def test_https_url_gives_the_same_frames(ingested, https_server):
  path, ingested_frames = ingested
  https_server.files["/videos/clip.avi"] = path.read_bytes()
  frames = load_video(https_server.url("/videos/clip.avi?X-Signature=abc"))
  np.testing.assert_array_equal(frames, ingested_frames)


def test_url_errors_name_the_url_but_not_its_query(https_server):
  https_server.files["/notes.avi"] = b"not a video at all"
  url = https_server.url("/notes.avi")
  with pytest.raises(encode.EncodeError) as error:
    load_video(url + "?token=SECRET")
  assert str(error.value).startswith(f"{url}: ffmpeg exited with")
  assert "SECRET" not in str(error.value)
  with pytest.raises(sources.SourceError, match=r"/missing\.avi: HTTP 404") as error:
    load_video(https_server.url("/missing.avi") + "?token=SECRET")
  assert "SECRET" not in str(error.value)


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "No such file"),
        (b"", "empty file"),
        (b"just some text\n" * 100, "ffmpeg exited with"),
    ],
)
def test_local_errors_name_the_file_and_the_problem(tmp_path, content, problem):
  path = tmp_path / "video.avi"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises((sources.SourceError, encode.EncodeError)) as error:
    load_video(path)
  assert str(path) in str(error.value)
  assert problem in str(error.value)
