"""HMDB51 listing from the official split folder, and the synthetic HMDB51 writer."""

import os
import subprocess
import urllib.parse

import pytest

from ingest_fixtures import upload_to_gcs
from mmv_core.video import encode
from mmv_core.video import encoding_recipes
from mmv_core.datasets import hmdb51
from mmv_core.video import sources
from mmv_core.datasets import synthetic_hmdb51
from mmv_core.datasets.dataset_listing import ListingError, TEST, TRAIN

ROOT = "gs://bucket/hmdb51"
NAMES = synthetic_hmdb51.class_names(3)
VIDEOS = synthetic_hmdb51.plan_videos(NAMES, videos_per_class=4)
ROLE_OF_ID = {1: TRAIN, 2: TEST, 0: None}
# Characters of real HMDB51 file names that naive code trips over.
AWKWARD_CHARACTERS = set(" !&()';[]#+éÇöÄß")


@pytest.fixture
def splits_dir(tmp_path) -> str:
  path = str(tmp_path / hmdb51.SPLITS_DIR_NAME)
  synthetic_hmdb51.write_split_files(path, NAMES, VIDEOS)
  return path


def _write(splits_dir: str, file_name: str, text: str | bytes) -> str:
  path = os.path.join(splits_dir, file_name)
  with open(path, "wb") as f:
    f.write(text.encode() if isinstance(text, str) else text)
  return path


def test_lists_every_used_video_with_label_roles_and_location(splits_dir):
  listing = hmdb51.list_videos(splits_dir, ROOT)

  assert listing.class_names == tuple(sorted(NAMES))
  assert listing.splits == (1, 2, 3)
  by_name = {v.name: v for v in listing.videos}
  assert set(by_name) == {v.file_name for v in VIDEOS}
  for planned in VIDEOS:
    video = by_name[planned.file_name]
    assert video.label_name == planned.label_name
    assert video.label == sorted(NAMES).index(planned.label_name)
    assert video.location == f"{ROOT}/{planned.label_name}/{planned.file_name}"
    assert [video.role(s) for s in (1, 2, 3)] == [ROLE_OF_ID[i] for i in planned.split_ids]
  # Per class, video i tests in split i % 3 + 1; video 3 is unused in split 1.
  assert listing.split_counts() == {1: (6, 3), 2: (9, 3), 3: (9, 3)}


def test_awkward_file_names_get_unique_safe_reversible_ids(splits_dir):
  listing = hmdb51.list_videos(splits_dir, ROOT)

  names = "".join(v.name for v in listing.videos)
  assert AWKWARD_CHARACTERS <= set(names)
  ids = [v.video_id for v in listing.videos]
  assert len(set(ids)) == len(ids) == len(VIDEOS)
  safe = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~%")
  for video in listing.videos:
    assert set(video.video_id) <= safe
    assert urllib.parse.unquote(video.video_id) + ".avi" == video.name


def test_videos_unused_in_every_split_are_left_out(splits_dir):
  _write(splits_dir, hmdb51.split_file_name(NAMES[0], 2), "gone.avi 0\nkept.avi 1 \n")

  names = {v.name for v in hmdb51.list_videos(splits_dir, ROOT).videos}

  assert "kept.avi" in names and "gone.avi" not in names


def test_tolerates_bom_crlf_blank_lines_and_trailing_spaces(splits_dir):
  _write(splits_dir, hmdb51.split_file_name(NAMES[0], 1), "\ufeffa b.avi 1  \r\n\r\nc.avi\t2\r\n")

  listing = hmdb51.list_videos(splits_dir, ROOT)

  roles = {v.name: v.role(1) for v in listing.videos if v.label_name == NAMES[0]}
  assert roles["a b.avi"] == TRAIN and roles["c.avi"] == TEST


@pytest.mark.parametrize("line", ["no_id.avi", "video.avi 3", "video.avi train"])
def test_malformed_line_names_file_and_line(splits_dir, line):
  path = _write(splits_dir, hmdb51.split_file_name(NAMES[1], 2), f"ok.avi 1\n{line}\n")

  with pytest.raises(ListingError, match=f"^{path}:2: expected"):
    hmdb51.list_videos(splits_dir, ROOT)


def test_video_listed_with_two_ids_names_both_lines(splits_dir):
  path = _write(splits_dir, hmdb51.split_file_name(NAMES[0], 3), "x.avi 1\ny.avi 2\nx.avi 2\n")

  with pytest.raises(ListingError, match=f"^{path}:3: 'x.avi' has a different id than on line 1"):
    hmdb51.list_videos(splits_dir, ROOT)


def test_video_in_two_classes_names_both(splits_dir):
  shared = VIDEOS[0].file_name
  other_class = NAMES[2]
  _write(splits_dir, hmdb51.split_file_name(other_class, 1), f"{shared} 0\n")

  with pytest.raises(ListingError) as error:
    hmdb51.list_videos(splits_dir, ROOT)
  message = str(error.value)
  assert repr(shared) in message
  assert repr(VIDEOS[0].label_name) in message and repr(other_class) in message


def test_missing_split_file_of_a_class_is_named(splits_dir):
  os.remove(os.path.join(splits_dir, hmdb51.split_file_name(NAMES[1], 3)))

  with pytest.raises(ListingError, match=f"missing split files \\['{NAMES[1]}_test_split3.txt'\\]"):
    hmdb51.list_videos(splits_dir, ROOT)


def test_folder_without_split_files(tmp_path):
  with pytest.raises(ListingError, match="no split files"):
    hmdb51.list_videos(str(tmp_path / "nowhere"), ROOT)


def test_non_utf8_split_file_names_file_and_line(splits_dir):
  path = _write(splits_dir, hmdb51.split_file_name(NAMES[0], 1), b"ok.avi 1\nAm\xe9lie.avi 1\n")

  with pytest.raises(ListingError, match=f"^{path}:2: not UTF-8"):
    hmdb51.list_videos(splits_dir, ROOT)


def test_lists_from_a_gcs_prefix(gcs_emulator):
  for name in NAMES:
    for split in hmdb51.SPLITS:
      lines = "".join(
          f"{v.file_name} {v.split_ids[split - 1]} \n" for v in VIDEOS if v.label_name == name
      )
      upload_to_gcs(gcs_emulator, f"splits/{hmdb51.split_file_name(name, split)}", lines.encode())

  listing = hmdb51.list_videos(f"gs://{gcs_emulator}/splits/", ROOT)

  assert {v.name for v in listing.videos} == {v.file_name for v in VIDEOS}


def test_synthetic_dataset_videos_are_where_the_listing_says(tmp_path):
  dataset = synthetic_hmdb51.write_dataset(
      str(tmp_path),
      num_classes=3,
      videos_per_class=3,
      width=64,
      height=48,
      fps=10.0,
      duration_s=0.5,
  )

  listing = hmdb51.list_videos(dataset.splits_dir, dataset.video_root)

  assert len(listing.videos) == len(dataset.videos)
  for video in listing.videos:
    assert sources.read_bytes(video.location)[8:12] == b"AVI "
    # ffmpeg reads the awkward path itself, as listed.
    result = subprocess.run(
        [encode.ffmpeg_executable(), *encoding_recipes.HMDB51.ffmpeg_args(video.location)],
        capture_output=True,
        check=True,
    )
    assert len(encode.split_jpeg_stream(result.stdout)) == 5  # 0.5 s at 10 fps.
