"""CSV datasets: dmvr's `video_path,start,end,label` layout, paths, segments, errors."""

import os
import re
import urllib.parse

import pytest

from mmv_core.datasets import csv_dataset
from mmv_core.datasets.dataset_listing import ListingError, TEST, TRAIN

HEADER = "video_path,start,end,label\n"
ROOT = "gs://bucket/videos"


def _write_dir(path, files: dict[str, str]) -> str:
  os.makedirs(path, exist_ok=True)
  for name, text in files.items():
    with open(os.path.join(path, name), "w", encoding="utf-8") as f:
      f.write(text)
  return str(path)


def _list(tmp_path, files: dict[str, str], video_root: str | None = ROOT):
  return csv_dataset.list_videos(_write_dir(tmp_path / "csv", files), video_root)


def test_lists_videos_with_sorted_labels_roles_and_locations(tmp_path):
  listing = _list(
      tmp_path,
      {
          "train_1.csv": HEADER + "swim/a.mp4,,,swim\nrun/b.mp4,,,run\n",
          "test_1.csv": HEADER + "swim/c.mp4,,,swim\n",
          "train_2.csv": HEADER + "swim/c.mp4,,,swim\nrun/b.mp4,,,run\n",
          "test_2.csv": HEADER + "swim/a.mp4,,,swim\n",
      },
  )

  assert listing.class_names == ("run", "swim")
  assert listing.splits == (1, 2)
  by_name = {v.name: v for v in listing.videos}
  assert set(by_name) == {"swim/a.mp4", "run/b.mp4", "swim/c.mp4"}
  assert by_name["swim/a.mp4"].location == f"{ROOT}/swim/a.mp4"
  assert (by_name["swim/a.mp4"].label, by_name["run/b.mp4"].label) == (1, 0)
  assert by_name["swim/a.mp4"].roles == ((1, TRAIN), (2, TEST))
  assert by_name["run/b.mp4"].roles == ((1, TRAIN), (2, TRAIN))
  assert (by_name["swim/a.mp4"].start_s, by_name["swim/a.mp4"].end_s) == (None, None)
  assert listing.split_counts() == {1: (2, 1), 2: (2, 1)}


def test_absolute_paths_are_used_as_written(tmp_path):
  absolute = ["/data/a.mp4", "gs://other/b.mp4", "https://example.com/c%20d.mp4"]
  listing = _list(
      tmp_path,
      {
          "train_1.csv": HEADER + "".join(f"{p},,,x\n" for p in absolute),
          "test_1.csv": HEADER + "e.mp4,,,x\n",
      },
  )

  assert {v.location for v in listing.videos} == {*absolute, f"{ROOT}/e.mp4"}


def test_awkward_relative_paths_are_quoted_under_an_https_root(tmp_path):
  listing = _list(
      tmp_path,
      {
          "train_1.csv": HEADER + '"clips/Amélie\'s #1, (take 2).mp4",,,x\n',
          "test_1.csv": HEADER + "b.mp4,,,x\n",
      },
      video_root="https://example.com/v/",
  )

  video = next(v for v in listing.videos if v.name.startswith("clips/"))
  assert video.location == (
      "https://example.com/v/" + urllib.parse.quote("clips/Amélie's #1, (take 2).mp4")
  )
  assert urllib.parse.unquote(video.video_id) == video.name
  assert "/" not in video.video_id and "#" not in video.video_id


def test_segments_of_one_file_are_distinct_videos_of_one_group(tmp_path):
  listing = _list(
      tmp_path,
      {
          "train_1.csv": HEADER + "long.mp4,0,10,a\nlong.mp4,10.5,20,b\nlong.mp4,30,,a\n",
          "test_1.csv": HEADER + "long.mp4,,5,b\n",
      },
  )

  segments = {(v.start_s, v.end_s): v for v in listing.videos}
  assert set(segments) == {(0.0, 10.0), (10.5, 20.0), (30.0, None), (None, 5.0)}
  assert segments[10.5, 20.0].name == "long.mp4#t=10.5,20.0"
  assert segments[30.0, None].name == "long.mp4#t=30.0"
  assert segments[None, 5.0].name == "long.mp4#t=,5.0"
  assert len({v.video_id for v in listing.videos}) == 4
  assert {v.group for v in listing.videos} == {"long.mp4"}


def test_classes_file_fixes_the_label_order(tmp_path):
  listing = _list(
      tmp_path,
      {
          "classes.txt": "zebra\nant\n\nunused\n",
          "train_1.csv": HEADER + "a.mp4,,,ant\n",
          "test_1.csv": HEADER + "z.mp4,,,zebra\n",
      },
  )

  assert listing.class_names == ("zebra", "ant", "unused")
  assert {v.name: v.label for v in listing.videos} == {"a.mp4": 1, "z.mp4": 0}


def test_extra_columns_and_blank_lines_are_ignored(tmp_path):
  listing = _list(
      tmp_path,
      {
          "train_1.csv": "label,caption,end,start,video_path\nx,a caption,,,a.mp4\n\n",
          "test_1.csv": HEADER + "b.mp4,,,x\n",
      },
  )

  assert {v.name for v in listing.videos} == {"a.mp4", "b.mp4"}


GOOD = {"train_1.csv": HEADER + "ok.mp4,,,x\n", "test_1.csv": HEADER + "ok2.mp4,,,x\n"}


@pytest.mark.parametrize(
    "files, message",
    [
        (
            {**GOOD, "train_1.csv": "video_path,start,label\n"},
            r"train_1.csv:1: header \['video_path', 'start', 'label'\] lacks columns \['end'\]",
        ),
        (
            {**GOOD, "train_1.csv": HEADER + "a.mp4,,,x\nb.mp4,soon,,x\n"},
            "train_1.csv:3: start 'soon' is not a number of seconds",
        ),
        (
            {**GOOD, "train_1.csv": HEADER + "a.mp4,-1,,x\n"},
            "train_1.csv:2: start '-1' is not a time",
        ),
        (
            {**GOOD, "train_1.csv": HEADER + "a.mp4,,inf,x\n"},
            "train_1.csv:2: end 'inf' is not a time",
        ),
        (
            {**GOOD, "train_1.csv": HEADER + "a.mp4,5,5,x\n"},
            "train_1.csv:2: end 5 s is not after start 5 s",
        ),
        (
            {**GOOD, "train_1.csv": HEADER + "a.mp4,,x\n"},
            "train_1.csv:2: 3 cells, the header names 4",
        ),
        ({**GOOD, "train_1.csv": HEADER + ",,,x\n"}, "train_1.csv:2: empty video_path"),
        ({**GOOD, "train_1.csv": HEADER + "a.mp4,,,\n"}, "train_1.csv:2: empty label"),
        (
            {**GOOD, "classes.txt": "x\n", "train_1.csv": HEADER + "a.mp4,,,x\nb.mp4,,,y\n"},
            "train_1.csv:3: label 'y' is not in classes.txt",
        ),
        ({**GOOD, "classes.txt": "x\ny\nx\n"}, "classes.txt:3: class 'x' repeats line 1"),
        (
            {"train_1.csv": HEADER + "a.mp4,,,x\n", "test_1.csv": HEADER + "a.mp4,,,y\n"},
            "train_1.csv:2: 'a.mp4' is labelled 'x' here and 'y' at .*test_1.csv:2",
        ),
        (
            {"train_1.csv": HEADER + "a.mp4,,,x\n", "test_1.csv": HEADER + "a.mp4,,,x\n"},
            "train_1.csv:2: 'a.mp4' is train in split 1 here and test at .*test_1.csv:2",
        ),
        (
            {**GOOD, "train_2.csv": HEADER + "a.mp4,,,x\n"},
            "split 2 has train_2.csv but no test_2.csv",
        ),
        ({"test_1.csv": HEADER + "a.mp4,,,x\n"}, "split 1 has test_1.csv but no train_1.csv"),
        ({"train_1.csv": HEADER, "test_1.csv": HEADER}, "the split CSVs list no videos"),
        ({**GOOD, "train1.csv": HEADER}, "train1.csv: not a split CSV"),
        ({}, "no train_<N>.csv or test_<N>.csv"),
    ],
)
def test_errors_name_the_file_and_line(tmp_path, files, message):
  with pytest.raises(ListingError, match=message):
    _list(tmp_path, files)


def test_relative_path_without_video_root(tmp_path):
  with pytest.raises(
      ListingError, match="train_1.csv:2: relative video_path 'a.mp4' needs a video root"
  ):
    _list(
        tmp_path,
        {"train_1.csv": HEADER + "a.mp4,,,x\n", "test_1.csv": HEADER + "/abs/b.mp4,,,x\n"},
        video_root=None,
    )


def test_the_example_in_the_docs_lists(tmp_path):
  docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "datasets.md")
  with open(docs, encoding="utf-8") as f:
    example = re.search(r"```csv\n(.*?)```", f.read(), re.DOTALL)[1]

  listing = _list(
      tmp_path,
      {"train_1.csv": example, "test_1.csv": HEADER + "t.mp4,,,walking\n"},
      video_root="/videos",
  )

  names = {v.name for v in listing.videos if v.role(1) == TRAIN}
  assert names == {
      "swimming/lake 01.mp4",
      "gs://my-bucket/raw/match.mp4#t=12.5,22.5",
      "clips/Amélie's walk, take 2.avi#t=0.0,8.0",
  }
