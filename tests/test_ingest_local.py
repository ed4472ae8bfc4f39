"""Ingestion from a local directory on the FnApiRunner; re-runs reuse the cache."""

import os

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from ingest_fixtures import tiny_dataset  # pylint: disable=unused-import
from ingest_fixtures import expected_videos, frame_digest, run_ingest, zip_members
from pipelines import ingest


def test_ingest_then_rerun_without_network(tiny_dataset, tmp_path):
  expected = expected_videos(zip_members(tiny_dataset.video_zip))
  labels = {v.video_id: (v.label, v.label_name) for v in tiny_dataset.videos}
  work_dir = str(tmp_path / "work")

  first = run_ingest(tiny_dataset.video_zip, tiny_dataset.splits_zip, work_dir,
                     str(tmp_path / "out1"), videos_per_shard=4)

  assert first.failures == {}
  assert {i: r["digest"] for i, r in first.videos.items()} == expected
  assert {i: (r["label"], r["label_name"]) for i, r in first.videos.items()} == labels
  n = len(expected)
  assert (first.counters["videos_fetched"], first.counters["videos_encoded"],
          first.counters["videos_cached"]) == (n, n, n)

  # The video ZIP is gone: everything must come from the cache.
  second = run_ingest(str(tmp_path / "no_such.zip"), tiny_dataset.splits_zip, work_dir,
                      str(tmp_path / "out2"))

  assert second.failures == {}
  assert second.videos == first.videos
  assert second.counters.get("videos_fetched", 0) == 0
  assert second.counters.get("videos_encoded", 0) == 0
  assert second.counters["videos_reused"] == n


def test_limits_select_classes_and_count(tiny_dataset, tmp_path):
  wanted = tiny_dataset.class_names[1]
  run = run_ingest(tiny_dataset.video_zip, tiny_dataset.splits_zip, str(tmp_path / "work"),
                   str(tmp_path / "out"), classes=[wanted], max_videos=2)
  assert len(run.videos) == 2
  assert {r["label_name"] for r in run.videos.values()} == {wanted}


def test_cli_fills_cache_and_read_video_cache_reads_it(tiny_dataset, tmp_path):
  work_dir = str(tmp_path / "work")
  totals = ingest.main(["--video_zip", tiny_dataset.video_zip,
                        "--splits_zip", tiny_dataset.splits_zip, "--work_dir", work_dir,
                        "--no_count_check"])
  assert totals["videos_cached"] == len(tiny_dataset.videos)
  assert os.path.getsize(os.path.join(work_dir, ingest.FAILURES_FILE)) == 0

  expected = expected_videos(zip_members(tiny_dataset.video_zip))
  with beam.Pipeline(runner="FnApiRunner") as p:
    digests = (p | ingest.ReadVideoCache(work_dir)
               | beam.Map(lambda v: (v.video_id, frame_digest(v.frames))))
    assert_that(digests, equal_to(sorted(expected.items())))
