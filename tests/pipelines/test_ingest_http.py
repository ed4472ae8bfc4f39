"""Ingestion over HTTP Range requests, with transient and permanent faults."""

import hashlib
import zipfile

import numpy as np
import pytest

from ingest_fixtures import TINY, expected_videos, run_ingest
from mmv_core.video import sources
from mmv_core.datasets import synthetic
from mmv_core.video import zip_index

# Bad members: video id suffix -> (content maker, expected stage, reason fragment).
_BAD = {
    "g01_c02": (lambda avi: avi[: len(avi) // 2], "encode", "truncated AVI"),
    "g01_c03": (lambda avi: b"", "encode", "empty file"),
    "g02_c02": (lambda avi: b"not a video, just text\n" * 30, "encode", "ffmpeg exited"),
}
_BAD_CRC = "g02_c03"
_MISSING = "g03_c02"


def _corrupt_central_crc(data: bytes, name: str) -> bytes:
  """Flips the CRC-32 the central directory records for `name`."""
  data = bytearray(data)
  position = data.index(b"PK\x01\x02")
  while True:
    name_length = int.from_bytes(data[position + 28 : position + 30], "little")
    if data[position + 46 : position + 46 + name_length] == name.encode():
      data[position + 16] ^= 0xFF
      return bytes(data)
    position = data.index(b"PK\x01\x02", position + 46)


@pytest.fixture(scope="module")
def faulty_dataset(tmp_path_factory):
  """(video zip bytes, splits zip bytes, good members, {video id: (stage, reason)})."""
  names = synthetic.class_names(2)
  videos = synthetic.plan_videos(names, videos_per_class=6, clips_per_group=3)
  rng = np.random.default_rng(0)
  members, good, bad = {}, {}, {}
  for video in videos:
    avi = synthetic.encode_avi(
        synthetic.render_frames(
            video.label,
            len(names),
            rng,
            width=TINY["width"],
            height=TINY["height"],
            num_frames=10,
            fps=TINY["fps"],
        ),
        TINY["fps"],
    )
    suffix = video.video_id[-7:]
    if suffix in _BAD and video.label == 0:
      make_bad, stage, reason = _BAD[suffix]
      members[video.member_name] = make_bad(avi)
      bad[video.video_id] = (stage, reason)
    elif suffix == _MISSING and video.label == 0:
      bad[video.video_id] = ("fetch", "is not in")
    else:
      members[video.member_name] = avi
      if suffix == _BAD_CRC and video.label == 0:
        bad[video.video_id] = ("extract", "CRC-32 mismatch")
      else:
        good[video.member_name] = avi
  path = str(tmp_path_factory.mktemp("faulty") / "videos.zip")
  synthetic.write_video_zip(path, members, zipfile.ZIP_STORED)
  with open(path, "rb") as f:
    data = f.read()
  crc_victim = next(n for n in members if n.endswith(f"{names[0]}_{_BAD_CRC}.avi"))
  data = _corrupt_central_crc(data, crc_victim)
  return data, synthetic.splits_zip_bytes(names, videos), good, bad


def test_good_videos_survive_faults_and_bad_ones_are_reported(
    faulty_dataset, range_server, tmp_path, monkeypatch
):
  monkeypatch.setattr(sources, "RETRY_INITIAL_DELAY_S", 0.01)
  zip_bytes, splits_bytes, good, bad = faulty_dataset
  video_zip = range_server.serve("UCF101_videos.zip", zip_bytes)
  splits_zip = range_server.serve("splits.zip", splits_bytes)
  index = zip_index.read_index(lambda s, n: zip_bytes[s : s + n], len(zip_bytes))
  # Faults are keyed by range start; offset 0 would also hit the size probe.
  good_names = sorted(n for n in good if index.members[n].header_offset > 0)
  # A 503 then a connection dropped mid-member on one video, two drops on another.
  range_server.inject(
      "UCF101_videos.zip", index.members[good_names[0]].header_offset, "503", "drop"
  )
  range_server.inject(
      "UCF101_videos.zip", index.members[good_names[1]].header_offset, "drop", "drop"
  )

  run = run_ingest(video_zip, splits_zip, str(tmp_path / "work"), str(tmp_path / "out"))

  assert {i: r["digest"] for i, r in run.videos.items()} == expected_videos(good)
  assert set(run.failures) == set(bad)
  for video_id, (stage, reason) in bad.items():
    assert run.failures[video_id]["stage"] == stage
    assert reason in run.failures[video_id]["reason"]
  assert run.counters["fetch_retries"] == 4
  assert run.counters["videos_failed"] == len(bad)


def test_transient_errors_that_persist_become_failures(
    faulty_dataset, range_server, tmp_path, monkeypatch
):
  monkeypatch.setattr(sources, "RETRY_INITIAL_DELAY_S", 0.01)
  zip_bytes, splits_bytes, good, _ = faulty_dataset
  video_zip = range_server.serve("UCF101_videos.zip", zip_bytes)
  index = zip_index.read_index(lambda s, n: zip_bytes[s : s + n], len(zip_bytes))
  victim = sorted(n for n in good if index.members[n].header_offset > 0)[0]
  range_server.inject(
      "UCF101_videos.zip", index.members[victim].header_offset, *["503"] * sources.RETRY_ATTEMPTS
  )

  run = run_ingest(
      video_zip,
      range_server.serve("splits.zip", splits_bytes),
      str(tmp_path / "work"),
      str(tmp_path / "out"),
  )

  victim_id = victim.split("/")[-1].removesuffix(".avi")
  assert run.failures[victim_id]["stage"] == "fetch"
  assert "HTTP 503" in run.failures[victim_id]["reason"]
  assert "gave up after" in run.failures[victim_id]["reason"]
  assert victim_id not in run.videos
  assert set(run.videos) >= {n.split("/")[-1].removesuffix(".avi") for n in good} - {victim_id}


def test_read_range_and_size_over_http(range_server):
  content = bytes(range(256)) * 4
  url = range_server.serve("blob", content)
  assert sources.size(url) == len(content)
  assert sources.read_range(url, 100, 300) == content[100:400]
  assert range_server.requests[-1] == ("/blob", 100, 399)
  with pytest.raises(sources.SourceError, match="HTTP 404"):
    sources.read_range(url + "_missing", 0, 10)


def test_tls_failure_falls_back_only_for_checksum_pinned_downloads(monkeypatch):
  content = b"split lists"

  def fake_get(location, context=None):
    if context is None:  # Verified TLS: the host's certificate is broken.
      raise sources.UntrustedCertificateError(f"{location}: TLS certificate not trusted")
    return content

  monkeypatch.setattr(sources, "_http_get", fake_get)
  url = "https://example.invalid/splits.zip"

  assert sources.read_bytes(url, expected_sha256=hashlib.sha256(content).hexdigest()) == content
  with pytest.raises(sources.UntrustedCertificateError):
    sources.read_bytes(url)
  with pytest.raises(sources.SourceError, match="sha256 is"):
    sources.read_bytes(url, expected_sha256="0" * 64)
