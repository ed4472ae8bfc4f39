"""Ingestion under hostile input: crafted archives, misbehaving servers, damaged caches.

Each case runs through `Ingest` (or the source readers under it) and asserts
what a user relies on: the job finishes, memory stays bounded, and every
listed video is either cached exactly once or in the failures with its stage
and a reason that names the problem.
"""

import http.server
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from ingest_fixtures import (
    deflate_zeros,
    expected_videos,
    patch_central_entry,
    read_file,
    run_ingest,
    video_id,
    zip_bytes,
    zip_members,
)
from mmv_core.video import encode
from mmv_core.video import sources
from mmv_core.video import video_cache
from mmv_core.video import zip_index
from pipelines import common
from pipelines import ingest
from pipelines import ingest_fetch

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_MIB = 1 << 20


def _assert_each_listed_video_once(run, listed: set[str]) -> None:
  """Every listed video is cached or failed, never both; failures say why."""
  assert set(run.videos) | set(run.failures) == listed
  assert not set(run.videos) & set(run.failures)
  assert all(f["stage"] and f["reason"] for f in run.failures.values())


def _write(path, data: bytes) -> str:
  path.write_bytes(data)
  return str(path)


# ---- Bounded decompression ----

# Run in a fresh interpreter so that its peak RSS is this run's alone.
_MEASURED_INGEST = """
import json, resource, sys
from ingest_fixtures import run_ingest
video_zip, splits_zip, work_dir, out_dir = sys.argv[1:]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run = run_ingest(video_zip, splits_zip, work_dir, out_dir)
peak_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"peak_growth_mib": peak_growth_kib / 1024, "videos": sorted(run.videos),
                  "failures": run.failures}))
"""


def test_zip_bomb_fails_its_video_in_bounded_memory(tiny_dataset, tmp_path):
  members = zip_members(tiny_dataset.video_zip)
  victim = sorted(members)[0]
  # ~1 MB of deflate data that inflates to 1 GiB, declaring the video's own size.
  bomb = deflate_zeros(1024)
  data = zip_bytes([(name, bomb if name == victim else avi) for name, avi in members.items()])
  data = patch_central_entry(
      data, victim, method=zip_index.DEFLATED, file_size=len(members[victim])
  )
  video_zip = _write(tmp_path / "bomb.zip", data)

  result = subprocess.run(
      [
          sys.executable,
          "-c",
          _MEASURED_INGEST,
          video_zip,
          tiny_dataset.splits_zip,
          str(tmp_path / "work"),
          str(tmp_path / "out"),
      ],
      capture_output=True,
      text=True,
      check=True,
      cwd=tmp_path,
      env={**os.environ, "PYTHONPATH": os.pathsep.join([_REPO_ROOT, f"{_REPO_ROOT}/tests"])},
  )
  outcome = json.loads(result.stdout.splitlines()[-1])

  assert outcome["peak_growth_mib"] < 200, outcome
  (failure,) = outcome["failures"].values()
  assert failure["video_id"] == video_id(victim)
  assert failure["stage"] == ingest_fetch.STAGE_EXTRACT
  assert victim in failure["reason"] and "more than" in failure["reason"]
  assert outcome["videos"] == sorted(video_id(n) for n in members if n != victim)


# ---- Malformed entries ----


def test_each_malformed_entry_fails_only_its_video(tiny_dataset, tmp_path):
  members = zip_members(tiny_dataset.video_zip)
  names = sorted(members)
  beyond_end, duplicated, short_zip64, encrypted = names[:4]
  # A ZIP64 extra field that claims 24 bytes (three values) and holds 16.
  short_extra = struct.pack("<HHQQ", 0x0001, 24, 1, 2)
  listed = [(name, members[name]) for name in names]
  unlisted = "UCF101/notes_XX.txt"
  data = zip_bytes(
      [*listed, (duplicated, members[names[-1]]), (unlisted, b"notes")],
      extra={short_zip64: short_extra},
  )
  data = patch_central_entry(data, beyond_end, header_offset=len(data) + 1000)
  data = patch_central_entry(
      data, short_zip64, file_size=0xFFFFFFFF, compressed_size=0xFFFFFFFF, header_offset=0xFFFFFFFF
  )
  data = patch_central_entry(data, encrypted, flags=0x1)
  # A name flagged UTF-8 that is not UTF-8.
  data = patch_central_entry(data, unlisted, flags=0x800).replace(b"notes_XX", b"notes_\xff\xfe")
  video_zip = _write(tmp_path / "malformed.zip", data)

  run = run_ingest(
      video_zip, tiny_dataset.splits_zip, str(tmp_path / "work"), str(tmp_path / "out")
  )

  _assert_each_listed_video_once(run, {video_id(n) for n in names})
  reasons = {
      name: run.failures[video_id(name)]["reason"]
      for name in (beyond_end, duplicated, short_zip64, encrypted)
  }
  assert "past the end" in reasons[beyond_end]
  assert "2 entries" in reasons[duplicated]
  assert "ZIP64 extra field" in reasons[short_zip64]
  assert "encrypted" in reasons[encrypted]
  assert all(name in reason for name, reason in reasons.items())
  assert {i: r["digest"] for i, r in run.videos.items()} == expected_videos(
      {n: members[n] for n in names[4:]}
  )


def test_unexpected_errors_fail_only_their_video(tiny_dataset, tmp_path, monkeypatch):
  names = sorted(zip_members(tiny_dataset.video_zip))
  extract, encode_jpeg_frames = zip_index.extract, encode.encode_jpeg_frames

  def failing_extract(member, data, source="zip"):
    if member.name == names[0]:
      raise KeyError("a bug in a library")
    return extract(member, data, source)

  def failing_encode(video, name="video.avi", **options):
    if name == names[1]:
      raise OSError(28, "No space left on device")
    return encode_jpeg_frames(video, name, **options)

  monkeypatch.setattr(zip_index, "extract", failing_extract)
  monkeypatch.setattr(encode, "encode_jpeg_frames", failing_encode)

  run = run_ingest(
      tiny_dataset.video_zip, tiny_dataset.splits_zip, str(tmp_path / "work"), str(tmp_path / "out")
  )

  _assert_each_listed_video_once(run, {video_id(n) for n in names})
  assert set(run.failures) == {video_id(names[0]), video_id(names[1])}
  assert run.failures[video_id(names[0])]["stage"] == ingest_fetch.STAGE_EXTRACT
  assert "KeyError" in run.failures[video_id(names[0])]["reason"]
  assert run.failures[video_id(names[1])]["stage"] == ingest_fetch.STAGE_ENCODE
  assert "No space left on device" in run.failures[video_id(names[1])]["reason"]


# ---- Servers that ignore Range or trickle ----

_HUGE_BODY_BYTES = 1 << 30


class _IgnoresRangeHandler(http.server.BaseHTTPRequestHandler):
  """Answers every object GET with 200 and a 1 GiB body; counts the bytes it gets to send."""

  protocol_version = "HTTP/1.1"

  def log_message(self, *args):
    pass

  def do_GET(self):  # pylint: disable=invalid-name
    self.close_connection = True
    if self.path.startswith("/storage/v1/"):  # The GCS client's metadata requests.
      self.send_error(404)
      return
    self.send_response(200)
    self.send_header("Content-Length", str(_HUGE_BODY_BYTES))
    self.end_headers()
    chunk = bytes(64 << 10)
    try:
      for _ in range(_HUGE_BODY_BYTES // len(chunk)):
        self.wfile.write(chunk)
        self.server.bytes_sent += len(chunk)
    except OSError:  # The client hung up.
      pass
    finally:
      self.server.answered.set()


@pytest.fixture
def ignores_range_server():
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _IgnoresRangeHandler)
  server.daemon_threads = True
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield server
  server.shutdown()
  server.server_close()


def _refused_read(server, read) -> tuple[str, int]:
  """The error of `read()`, and how many bytes the server sent before the client hung up."""
  server.bytes_sent = 0
  server.answered = threading.Event()
  with pytest.raises(sources.SourceError) as error:
    read()
  assert server.answered.wait(timeout=30)
  return str(error.value), server.bytes_sent


def test_answers_ignoring_range_are_refused_before_their_body(ignores_range_server):
  url = f"http://127.0.0.1:{ignores_range_server.server_port}/UCF101_videos.zip"
  started = time.monotonic()

  size_error, sent_to_size = _refused_read(ignores_range_server, lambda: sources.size(url))
  range_error, sent_to_range = _refused_read(
      ignores_range_server, lambda: sources.read_range(url, 5000, 1000)
  )

  assert "ignored the Range header (HTTP 200)" in size_error
  assert "ignored the Range header (HTTP 200)" in range_error
  # What the server sent at most filled the sockets' buffers: the body was not read.
  assert sent_to_size < 64 * _MIB and sent_to_range < 64 * _MIB
  assert time.monotonic() - started < 10


def test_gcs_answers_ignoring_range_are_refused_within_the_range(ignores_range_server, monkeypatch):
  monkeypatch.setenv(
      "STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{ignores_range_server.server_port}"
  )
  monkeypatch.setenv("NO_GCE_CHECK", "true")
  sources._gcs_client.cache_clear()  # pylint: disable=protected-access
  try:
    error, sent = _refused_read(
        ignores_range_server, lambda: sources.read_range("gs://bucket/videos.zip", 5000, 1000)
    )
  finally:
    sources._gcs_client.cache_clear()  # pylint: disable=protected-access
  assert "ignored the Range header" in error
  assert sent < 64 * _MIB


def _short_deadlines(monkeypatch) -> None:
  monkeypatch.setattr(sources, "READ_DEADLINE_S", 0.5)
  monkeypatch.setattr(sources, "READ_DEADLINE_S_PER_MB", 0.0)
  monkeypatch.setattr(sources, "RETRY_ATTEMPTS", 2)
  monkeypatch.setattr(sources, "RETRY_INITIAL_DELAY_S", 0.01)


def test_a_trickling_read_is_cut_off_at_its_deadline(range_server, monkeypatch):
  _short_deadlines(monkeypatch)
  url = range_server.serve("blob", bytes(20_000))  # 10 s at the trickle's 2 KB/s.
  range_server.inject("blob", 1000, "trickle", "trickle")

  started = time.monotonic()
  with pytest.raises(sources.TransientSourceError, match="deadline") as error:
    sources.read_range(url, 1000, 15_000)

  assert "gave up after 2 attempts" in str(error.value)
  assert time.monotonic() - started < 4


def test_a_trickled_member_fails_its_video_and_the_job_goes_on(
    tiny_dataset, range_server, tmp_path, monkeypatch
):
  _short_deadlines(monkeypatch)
  data = read_file(tiny_dataset.video_zip)
  video_zip = range_server.serve("UCF101_videos.zip", data)
  index = zip_index.read_index(lambda start, length: data[start : start + length], len(data))
  victim = max(index.members.values(), key=lambda m: m.header_offset)
  range_server.inject("UCF101_videos.zip", victim.header_offset, "trickle", "trickle")

  run = run_ingest(
      video_zip, tiny_dataset.splits_zip, str(tmp_path / "work"), str(tmp_path / "out")
  )

  _assert_each_listed_video_once(run, set(expected_videos(zip_members(tiny_dataset.video_zip))))
  assert set(run.failures) == {video_id(victim.name)}
  assert run.failures[video_id(victim.name)]["stage"] == ingest_fetch.STAGE_FETCH
  assert "deadline" in run.failures[video_id(victim.name)]["reason"]


# ---- The video cache ----


def _shards_by_video(work_dir: str) -> dict[str, str]:
  return {video: entry.shard for video, entry in video_cache.read_index(work_dir).items()}


def _truncate(path: str) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [_truncate, os.remove], ids=["truncated", "deleted"])
def test_a_damaged_shard_fails_its_videos_once_then_they_are_fetched_again(
    tiny_dataset, tmp_path, damage
):
  work_dir = str(tmp_path / "work")
  first = run_ingest(
      tiny_dataset.video_zip,
      tiny_dataset.splits_zip,
      work_dir,
      str(tmp_path / "out1"),
      videos_per_shard=4,
  )
  index = video_cache.read_index(work_dir)
  damaged = sorted({entry.shard for entry in index.values()})[0]
  damage(damaged)
  # The videos whose records the damage reached: all of a deleted shard's, those
  # past the cut of a truncated one. The others of that shard are still served.
  left = os.path.getsize(damaged) if os.path.exists(damaged) else 0
  in_damaged = {
      video
      for video, entry in index.items()
      if entry.shard == damaged and entry.offset + entry.length > left
  }
  assert in_damaged

  second = run_ingest(
      tiny_dataset.video_zip, tiny_dataset.splits_zip, work_dir, str(tmp_path / "out2")
  )
  third = run_ingest(
      tiny_dataset.video_zip, tiny_dataset.splits_zip, work_dir, str(tmp_path / "out3")
  )

  assert set(second.failures) == in_damaged
  assert all(
      f["stage"] == ingest_fetch.STAGE_CACHE and damaged in f["reason"]
      for f in second.failures.values()
  )
  assert second.videos == {v: r for v, r in first.videos.items() if v not in in_damaged}
  assert third.failures == {}
  assert third.videos == first.videos
  assert third.counters["videos_fetched"] == len(in_damaged)


@pytest.mark.parametrize("index_content", [b"\x00not json", b'{"shard": 3}'])
def test_a_corrupt_index_file_is_skipped_and_its_videos_fetched_again(
    tiny_dataset, tmp_path, index_content
):
  work_dir = str(tmp_path / "work")
  first = run_ingest(
      tiny_dataset.video_zip,
      tiny_dataset.splits_zip,
      work_dir,
      str(tmp_path / "out1"),
      videos_per_shard=4,
  )
  shards = _shards_by_video(work_dir)
  damaged = sorted(set(shards.values()))[0]
  index_path = os.path.join(
      video_cache.cache_dir(work_dir),
      video_cache.INDEX_DIR,
      os.path.basename(damaged).replace(video_cache.SHARD_SUFFIX, video_cache.INDEX_SUFFIX),
  )
  with open(index_path, "wb") as f:
    f.write(index_content)

  second = run_ingest(
      tiny_dataset.video_zip, tiny_dataset.splits_zip, work_dir, str(tmp_path / "out2")
  )

  assert second.failures == {}
  assert second.videos == first.videos
  assert second.counters["videos_fetched"] == sum(s == damaged for s in shards.values())


def test_a_cache_filled_from_another_archive_is_not_served(tiny_dataset, tmp_path):
  work_dir = str(tmp_path / "work")
  run_ingest(tiny_dataset.video_zip, tiny_dataset.splits_zip, work_dir, str(tmp_path / "out1"))
  # Another archive: the same members, except that two videos swapped contents.
  members = zip_members(tiny_dataset.video_zip)
  first, second = sorted(members)[:2]
  members[first], members[second] = members[second], members[first]
  other_zip = _write(tmp_path / "other.zip", zip_bytes(list(members.items())))

  rerun = run_ingest(other_zip, tiny_dataset.splits_zip, work_dir, str(tmp_path / "out2"))

  assert rerun.failures == {}
  assert {i: r["digest"] for i, r in rerun.videos.items()} == expected_videos(members)
  assert rerun.counters["videos_fetched"] == 2
  assert rerun.counters["videos_reused"] == len(members) - 2


# ---- Split lists ----


def test_a_video_under_two_classes_stops_the_job_before_it_starts(tiny_dataset, tmp_path, capsys):
  video = next(v for v in tiny_dataset.videos if v.label_name.startswith("Synth"))
  other = next(n for n in tiny_dataset.class_names if n != video.label_name)
  with zipfile.ZipFile(tiny_dataset.splits_zip) as archive:
    lists = {name: archive.read(name).decode() for name in archive.namelist()}
  list_name = next(
      n for n, text in lists.items() if n.endswith(".txt") and video.list_entry in text
  )
  twin_entry = f"{other}/{video.video_id}.avi"
  if "train" in list_name:
    twin_entry += f" {tiny_dataset.class_names.index(other) + 1}"
  lists[list_name] += twin_entry + "\r\n"
  line_of_video = next(
      i
      for i, line in enumerate(lists[list_name].splitlines(), 1)
      if line.startswith(video.list_entry)
  )
  line_of_twin = len(lists[list_name].splitlines())
  splits_zip = tmp_path / "splits.zip"
  with zipfile.ZipFile(splits_zip, "w") as archive:
    for name, text in lists.items():
      archive.writestr(name, text)
  work_dir = tmp_path / "work"

  with pytest.raises(SystemExit) as exit_info:
    common.run_main(
        ingest.main,
        "python -m pipelines.ingest",
        [
            "--video_zip",
            tiny_dataset.video_zip,
            "--splits_zip",
            str(splits_zip),
            "--work_dir",
            str(work_dir),
            "--no_count_check",
        ],
    )

  assert exit_info.value.code == common.USAGE_ERROR_STATUS
  (message,) = capsys.readouterr().err.splitlines()
  short_name = list_name.rsplit("/", 1)[-1]
  assert video.video_id in message
  assert f"{short_name} line {line_of_video}" in message
  assert f"{short_name} line {line_of_twin}" in message
  assert not work_dir.exists()
