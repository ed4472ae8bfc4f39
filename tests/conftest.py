"""Fixtures shared by the test files: pytest finds them here, no import needed."""

import http
import os
import shutil
import socket
import tempfile

import pytest

from ingest_fixtures import TINY, RangeServer
from mmv_core import checkpoints
from mmv_core import embedder
from mmv_core import embedder_config
from mmv_core.video import sources
from mmv_core.datasets import synthetic


def pytest_xdist_auto_num_workers(config) -> int:
  """`-n auto` (pytest.ini): a worker per core and one more, at most `--maxprocesses`.

  Many tests wait on subprocesses, servers and deadlines; the extra worker
  keeps the cores busy meanwhile (on 2 cores: 341 s instead of 379 s).
  """
  del config
  return (os.cpu_count() or 1) + 1


def pytest_configure(config) -> None:
  """Gives the run one JAX compilation cache, shared by every process it starts.

  The controller makes the directory and names it in the environment, which
  the xdist workers and the jobs the tests start inherit (the jobs read it as
  their default `--jax_cache_dir`, so no test writes to the user's cache). A
  program compiled by one worker (a backbone at the tests' clip shape) is then
  loaded, not compiled again, by the others. Every program is kept, as the
  jobs keep them (`embedder.enable_compilation_cache`).
  """
  if not hasattr(config, "workerinput"):  # The controller, or a run without workers.
    cache_dir = tempfile.mkdtemp(prefix="mmv-tests-jax-cache-")
    os.environ[embedder_config.CACHE_DIR_ENV] = cache_dir
    config.add_cleanup(lambda: shutil.rmtree(cache_dir, ignore_errors=True))
  embedder.enable_compilation_cache(os.environ[embedder_config.CACHE_DIR_ENV])


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> synthetic.SyntheticDataset:
  """3 classes x 3 videos of 64x48 at 10 fps for 1 s, in UCF101's layout."""
  return synthetic.write_dataset(str(tmp_path_factory.mktemp("tiny_ucf101")), **TINY)


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory) -> str:
  """A random S3D-G checkpoint in the released pickle format (mmv_s3d.pkl)."""
  path = tmp_path_factory.mktemp("ckpt") / "mmv_s3d.pkl"
  checkpoints.write_random_checkpoint(path, *checkpoints.checkpoint_shapes("s3d"), seed=3)
  return str(path)


@pytest.fixture
def range_server():
  """An HTTP server on 127.0.0.1 that honours Range, with injectable faults."""
  server = RangeServer()
  yield server
  server.close()


def _create_only_if_absent(insert):
  """The emulator's upload handler, honouring `ifGenerationMatch=0` as GCS does.

  GCS refuses such an upload with 412 when the object exists (our claims of
  output directories rely on it); the emulator ignores the parameter.
  """
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=import-outside-toplevel

  def upload(request, response, storage, *args, **kwargs):
    if request.query.get("ifGenerationMatch") == ["0"]:
      name = request.query["name"][0] if "name" in request.query else request.data["meta"]["name"]
      try:
        storage.get_file_obj(request.params["bucket_name"], name)
      except NotFound:
        pass
      else:
        response.status = http.HTTPStatus.PRECONDITION_FAILED
        return None
    return insert(request, response, storage, *args, **kwargs)

  return upload


@pytest.fixture
def gcs_emulator(monkeypatch):
  """Yields a bucket name on an in-process GCS emulator that both our client and
  Beam's gs:// filesystem use."""
  from gcp_storage_emulator import server as emulator  # pylint: disable=import-outside-toplevel
  from gcp_storage_emulator.handlers import objects  # pylint: disable=import-outside-toplevel
  from apache_beam.internal.gcp import auth  # pylint: disable=import-outside-toplevel

  upload = _create_only_if_absent(objects.insert)
  for _, handlers in emulator.HANDLERS:
    if handlers.get("POST") is objects.insert:
      monkeypatch.setitem(handlers, "POST", upload)
  monkeypatch.setattr(objects, "insert", upload)

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
