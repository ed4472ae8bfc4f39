"""Ingestion from, and into, an in-process GCS emulator."""

from ingest_fixtures import expected_videos, read_file, run_ingest, upload_to_gcs, zip_members
from mmv_core.video import sources
from mmv_core.video import video_cache


def test_ingest_from_gcs_with_gcs_work_dir(tiny_dataset, gcs_emulator, tmp_path):
  zip_bytes = read_file(tiny_dataset.video_zip)
  video_zip = upload_to_gcs(gcs_emulator, "mirror/UCF101_videos.zip", zip_bytes)
  splits_zip = upload_to_gcs(gcs_emulator, "mirror/splits.zip", read_file(tiny_dataset.splits_zip))
  assert sources.size(video_zip) == len(zip_bytes)
  assert sources.read_range(video_zip, 10, 100) == zip_bytes[10:110]
  work_dir = f"gs://{gcs_emulator}/work"

  first = run_ingest(video_zip, splits_zip, work_dir, str(tmp_path / "out1"))

  expected = expected_videos(zip_members(tiny_dataset.video_zip))
  assert first.failures == {}
  assert {i: r["digest"] for i, r in first.videos.items()} == expected
  assert set(video_cache.read_index(work_dir)) == set(expected)

  second = run_ingest(video_zip, splits_zip, work_dir, str(tmp_path / "out2"))
  assert second.videos == first.videos
  assert second.counters.get("videos_fetched", 0) == 0
