"""Ingestion from a local directory on the FnApiRunner; re-runs reuse the cache."""

import dataclasses
import os


import cli_checks
from ingest_fixtures import expected_videos, frame_digest, run_ingest, zip_members
from mmv_core import datasets
from mmv_core.datasets import synthetic
from mmv_core.video import video_cache
from pipelines import ingest
from pipelines import ingest_fetch
from pipelines import ingest_listing


def test_ingest_then_rerun_without_network(tiny_dataset, tmp_path):
  expected = expected_videos(zip_members(tiny_dataset.video_zip))
  labels = {v.video_id: (v.label, v.label_name) for v in tiny_dataset.videos}
  work_dir = str(tmp_path / "work")

  first = run_ingest(
      tiny_dataset.video_zip,
      tiny_dataset.splits_zip,
      work_dir,
      str(tmp_path / "out1"),
      videos_per_shard=4,
  )

  assert first.failures == {}
  assert {i: r["digest"] for i, r in first.videos.items()} == expected
  assert {i: (r["label"], r["label_name"]) for i, r in first.videos.items()} == labels
  n = len(expected)
  assert (
      first.counters["videos_fetched"],
      first.counters["videos_encoded"],
      first.counters["videos_cached"],
  ) == (n, n, n)

  # The video ZIP is gone: everything must come from the cache.
  second = run_ingest(
      str(tmp_path / "no_such.zip"), tiny_dataset.splits_zip, work_dir, str(tmp_path / "out2")
  )

  assert second.failures == {}
  assert second.videos == first.videos
  assert second.counters.get("videos_fetched", 0) == 0
  assert second.counters.get("videos_encoded", 0) == 0
  assert second.counters["videos_reused"] == n


def test_limits_select_classes_and_count(tiny_dataset, tmp_path):
  wanted = tiny_dataset.class_names[1]
  run = run_ingest(
      tiny_dataset.video_zip,
      tiny_dataset.splits_zip,
      str(tmp_path / "work"),
      str(tmp_path / "out"),
      classes=[wanted],
      max_videos=2,
  )
  assert len(run.videos) == 2
  assert {r["label_name"] for r in run.videos.values()} == {wanted}


def test_split_sizes_that_differ_from_the_official_ones_are_named(tiny_dataset):
  listing = datasets.UCF101.list_videos(tiny_dataset.splits_zip)
  counts = listing.split_counts()
  assert ingest_listing.split_count_differences(listing, "UCF101", counts) == []

  official = {**counts, 2: (counts[2][0] + 1, counts[2][1])}
  assert ingest_listing.split_count_differences(listing, "UCF101", official) == [
      f"split 2: {counts[2][0]} train / {counts[2][1]} test videos, official UCF101 has "
      f"{counts[2][0] + 1} / {counts[2][1]}"
  ]


def test_cli_fills_the_cache_that_read_video_reads(tiny_dataset, tmp_path):
  """The command as a user runs it: its default runner, a worker process per core."""
  work_dir = str(tmp_path / "work")
  totals = ingest.main(
      [
          f"--video_zip={tiny_dataset.video_zip}",
          f"--splits_zip={tiny_dataset.splits_zip}",
          f"--work_dir={work_dir}",
          "--no_count_check",
      ]
  )
  assert totals["videos_cached"] == len(tiny_dataset.videos)
  assert os.path.getsize(os.path.join(work_dir, ingest.FAILURES_FILE)) == 0

  expected = expected_videos(zip_members(tiny_dataset.video_zip))
  cached = video_cache.read_index(work_dir).items()
  assert {key: frame_digest(video_cache.read_video(entry).frames) for key, entry in cached} == (
      expected
  )


def test_ctrl_c_ends_ingestion_with_one_line_and_status_130(
    tiny_dataset, tmp_path, capsys, monkeypatch
):
  cli_checks.interrupt_at(monkeypatch, ingest.beam.Pipeline, "run")
  argv = [
      f"--video_zip={tiny_dataset.video_zip}",
      f"--splits_zip={tiny_dataset.splits_zip}",
      f"--work_dir={tmp_path / 'work'}",
      "--no_count_check",
  ]
  assert cli_checks.interrupted_line(ingest.main, argv, capsys) == (
      f"{ingest.PROG}: interrupted; the videos re-encoded so far are in the cache: rerun to go on"
  )


def test_reused_videos_take_labels_from_the_current_lists_and_bad_records_fail_alone(
    tiny_dataset, tmp_path
):
  work_dir = str(tmp_path / "work")
  first = run_ingest(
      tiny_dataset.video_zip,
      tiny_dataset.splits_zip,
      work_dir,
      str(tmp_path / "out1"),
      videos_per_shard=4,
  )
  # Other split lists: the same classes, numbered in reverse order.
  names = list(reversed(tiny_dataset.class_names))
  relabelled = [
      dataclasses.replace(v, label=names.index(tiny_dataset.class_names[v.label]))
      for v in tiny_dataset.videos
  ]
  splits_zip = tmp_path / "other_splits.zip"
  splits_zip.write_bytes(synthetic.splits_zip_bytes(names, relabelled))
  # And one video's record damaged on disk: one byte in the middle of a shard.
  index = video_cache.read_index(work_dir)
  bad_shard = sorted({entry.shard for entry in index.values()})[0]
  data = bytearray(open(bad_shard, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(bad_shard, "wb").write(bytes(data))
  in_bad_shard = {
      video_id
      for video_id, entry in index.items()
      if entry.shard == bad_shard and entry.offset <= len(data) // 2 < entry.offset + entry.length
  }

  second = run_ingest(
      str(tmp_path / "no_such.zip"), str(splits_zip), work_dir, str(tmp_path / "out2")
  )

  assert len(in_bad_shard) == 1 and set(second.failures) == in_bad_shard
  assert all(
      f["stage"] == ingest_fetch.STAGE_CACHE and bad_shard in f["reason"]
      for f in second.failures.values()
  )
  assert set(second.videos) == set(first.videos) - in_bad_shard
  for v in relabelled:
    if v.video_id in second.videos:
      assert (second.videos[v.video_id]["label"], second.videos[v.video_id]["label_name"]) == (
          v.label,
          names[v.label],
      )


def test_help_is_python_dash_m_with_every_flag_documented():
  text = cli_checks.help_text("pipelines.ingest")
  assert text.startswith(f"usage: {ingest.PROG} ")
  assert cli_checks.undocumented_options(text) == []
