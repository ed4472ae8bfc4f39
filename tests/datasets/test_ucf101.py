"""Split lists: parsing, labels, the HandStandPushups quirk."""

import dataclasses
import io
import zipfile

import pytest

from mmv_core.datasets import synthetic
from mmv_core.datasets import ucf101

NAMES = synthetic.class_names(3, include_handstand_pushups=True)
VIDEOS = synthetic.plan_videos(NAMES, videos_per_class=4, clips_per_group=1)


@pytest.mark.parametrize("line_ending", ["\r\n", "\n"])
def test_parses_every_listed_video_with_label_and_roles(line_ending):
  lists = ucf101.parse_split_zip(synthetic.splits_zip_bytes(NAMES, VIDEOS, line_ending))

  assert lists.class_names == tuple(NAMES)
  assert [v.video_id for v in lists.videos] == sorted(v.video_id for v in VIDEOS)
  planned = {v.video_id: v for v in VIDEOS}
  for record in lists.videos:
    assert record.label == NAMES.index(record.label_name)
    assert record.label_name == planned[record.video_id].label_name
    assert record.roles == tuple(planned[record.video_id].role(s) for s in ucf101.SPLITS)
    assert record.member_name == f"UCF101/{record.video_id}.avi"


def test_handstand_pushups_list_spelling_maps_to_zip_name():
  data = synthetic.splits_zip_bytes(NAMES, VIDEOS)
  # Group 1 is split 1's test group, so group 2 is in trainlist01.
  assert b"HandstandPushups/v_HandStandPushups_g02_c01.avi 1\r\n" in _list_text(data)

  ids = {v.video_id for v in ucf101.parse_split_zip(data).videos}

  assert "v_HandstandPushups_g01_c01" in ids
  assert not any("HandStand" in i for i in ids)


def _list_text(split_zip: bytes) -> bytes:
  with zipfile.ZipFile(io.BytesIO(split_zip)) as archive:
    return archive.read("ucfTrainTestlist/trainlist01.txt")


def test_a_video_listed_under_two_classes_is_an_error_naming_both_lines():
  video = next(v for v in VIDEOS if v.label_name.startswith("Synth") and v.role(1) == ucf101.TRAIN)
  other = next(n for n in NAMES if n != video.label_name)
  twin = dataclasses.replace(
      video, label=NAMES.index(other), label_name=other, list_entry=f"{other}/{video.video_id}.avi"
  )
  data = synthetic.splits_zip_bytes(NAMES, [*VIDEOS, twin])
  lines = _list_text(data).decode().splitlines()
  line_of_video = 1 + next(i for i, line in enumerate(lines) if line.startswith(video.list_entry))
  line_of_twin = 1 + next(i for i, line in enumerate(lines) if line.startswith(twin.list_entry))

  with pytest.raises(ucf101.SplitListError) as error:
    ucf101.parse_split_zip(data, source="splits.zip")

  message = str(error.value)
  assert message.startswith(f"splits.zip: {video.video_id}")
  assert f"{video.label_name} (trainlist01.txt line {line_of_video})" in message
  assert f"{other} (trainlist01.txt line {line_of_twin})" in message
