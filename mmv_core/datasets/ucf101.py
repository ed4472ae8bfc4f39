"""UCF101: pinned sources, known sizes and the official split lists.

The split-list zip (`ucfTrainTestlist/`) holds `classInd.txt`
(`<1-based index> <Class>`), `trainlist0{1,2,3}.txt`
(`<Class>/v_<Class>_gGG_cCC.avi <1-based index>`) and `testlist0{1,2,3}.txt`
(`<Class>/v_<Class>_gGG_cCC.avi`). `parse_split_zip` turns it into one
`VideoRecord` per video with its label and its role in each split.
"""

import dataclasses
import io
import re
import zipfile

from mmv_core.video import sources

# Pinned by the widely used TensorFlow Datasets builder (UCF101.md). The video
# ZIP is checked by size and by every member's CRC-32, not by a whole-file hash.
VIDEO_ZIP_URL = "gs://thumos14_files/UCF101_videos.zip"
VIDEO_ZIP_BYTES = 6_960_400_115
SPLITS_ZIP_URL = "https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip"
SPLITS_ZIP_SHA256 = "5c0d1a53b8ed364a2ac830a73f405e51bece7d98ce1254fd19ed4a36b224bd27"

VIDEO_MEMBER_DIR = "UCF101"
SPLITS = (1, 2, 3)
TRAIN = "train"
TEST = "test"
# (train videos, test videos) of each official split.
EXPECTED_SPLIT_COUNTS = {1: (9537, 3783), 2: (9586, 3734), 3: (9624, 3696)}

_VIDEO_NAME = re.compile(r"^v_(?P<cls>[A-Za-z]+)_g(?P<group>\d+)_c(?P<clip>\d+)$")


class SplitListError(ValueError):
  """The split-list zip is malformed or inconsistent."""


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One UCF101 video.

  Attributes:
    video_id: file stem in the video ZIP, e.g. `v_ApplyEyeMakeup_g08_c01`.
    label: 0-based index of the class in `classInd.txt` order.
    label_name: class name, e.g. `ApplyEyeMakeup`.
    roles: role (`TRAIN`, `TEST` or None when absent) in splits 1, 2, 3.
  """

  video_id: str
  label: int
  label_name: str
  roles: tuple[str | None, ...]

  @property
  def group(self) -> int:
    """UCF101 group (`gGG`): clips of one group share actors and scenes."""
    return int(_VIDEO_NAME.match(self.video_id)["group"])

  @property
  def member_name(self) -> str:
    """Path of the video inside the ZIP mirror."""
    return f"{VIDEO_MEMBER_DIR}/{self.video_id}.avi"

  def role(self, split: int) -> str | None:
    return self.roles[SPLITS.index(split)]


@dataclasses.dataclass(frozen=True)
class SplitLists:
  """The parsed split-list zip: classes and every listed video, sorted by id."""

  class_names: tuple[str, ...]
  videos: tuple[VideoRecord, ...]

  def videos_in(self, split: int, role: str) -> list[VideoRecord]:
    return [v for v in self.videos if v.role(split) == role]

  def split_counts(self) -> dict[int, tuple[int, int]]:
    return {s: (len(self.videos_in(s, TRAIN)), len(self.videos_in(s, TEST))) for s in SPLITS}


def video_id_from_entry(entry: str, class_name: str) -> str:
  """Maps a split-list entry to the video's file stem in the ZIP mirror.

  The lists spell some file names with different capitals than their class
  folder (`HandstandPushups/v_HandStandPushups_g01_c01.avi`) while the mirror
  names files after the class (`v_HandstandPushups_g01_c01.avi`).
  """
  stem = entry.rsplit("/", 1)[-1].removesuffix(".avi")
  match = _VIDEO_NAME.match(stem)
  if not match:
    raise SplitListError(f"unexpected video name {entry!r}")
  if match["cls"] != class_name and match["cls"].lower() == class_name.lower():
    stem = f"v_{class_name}_g{match['group']}_c{match['clip']}"
  return stem


def _lines(archive: zipfile.ZipFile, name: str, source: str) -> list[tuple[int, str]]:
  """(1-based line number, stripped text) of each non-blank line of list `name`."""
  matches = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == name]
  if not matches:
    raise SplitListError(f"{source}: no {name} in the split-list zip")
  text = archive.read(matches[0]).decode("utf-8-sig")
  return [
      (number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()
  ]


def parse_split_zip(data: bytes, source: str = "split-list zip") -> SplitLists:
  """Parses the split-list zip's bytes; `source` names it in errors."""
  try:
    archive = zipfile.ZipFile(io.BytesIO(data))
  except zipfile.BadZipFile as e:
    raise SplitListError(f"{source}: not a zip file ({e})") from e
  with archive:
    class_names = []
    for _, line in _lines(archive, "classInd.txt", source):
      fields = line.split()
      if len(fields) != 2 or not fields[0].isdigit():
        raise SplitListError(f"{source}: classInd.txt line {line!r} is not '<index> <Class>'")
      index, name = fields
      if int(index) != len(class_names) + 1:
        raise SplitListError(f"{source}: classInd.txt is not numbered 1..N at {line!r}")
      class_names.append(name)
    label_of = {name: i for i, name in enumerate(class_names)}

    roles: dict[str, dict[int, str]] = {}
    # Each video's class, and where it was first given ("<list> line <n>").
    class_given: dict[str, tuple[str, str]] = {}
    for split in SPLITS:
      for role in (TRAIN, TEST):
        list_name = f"{role}list0{split}.txt"
        for number, line in _lines(archive, list_name, source):
          entry, *listed_label = line.split()
          class_name = entry.split("/")[0]
          if class_name not in label_of:
            raise SplitListError(
                f"{source}: {list_name} lists {entry!r} of unknown class {class_name!r}"
            )
          if listed_label and int(listed_label[0]) != label_of[class_name] + 1:
            raise SplitListError(
                f"{source}: {list_name} gives {entry!r} label {listed_label[0]}, "
                f"but classInd.txt numbers {class_name} {label_of[class_name] + 1}"
            )
          video_id = video_id_from_entry(entry, class_name)
          here = f"{list_name} line {number}"
          first_class, first_place = class_given.setdefault(video_id, (class_name, here))
          if first_class != class_name:
            raise SplitListError(
                f"{source}: {video_id} is listed under two classes: "
                f"{first_class} ({first_place}) and {class_name} ({here})"
            )
          if roles.setdefault(video_id, {}).get(split) not in (None, role):
            raise SplitListError(f"{source}: {video_id} is both train and test in split {split}")
          roles[video_id][split] = role

  videos = tuple(
      VideoRecord(
          video_id=vid,
          label=label_of[class_given[vid][0]],
          label_name=class_given[vid][0],
          roles=tuple(roles[vid].get(s) for s in SPLITS),
      )
      for vid in sorted(roles)
  )
  return SplitLists(class_names=tuple(class_names), videos=videos)


def load_split_lists(location: str = SPLITS_ZIP_URL) -> SplitLists:
  """Reads and parses the split-list zip from a local path, gs:// or https://.

  The pinned default URL is verified by sha256 (its host has a history of TLS
  failures, so the checksum, not the certificate, is what we trust).
  """
  expected = SPLITS_ZIP_SHA256 if location == SPLITS_ZIP_URL else None
  return parse_split_zip(sources.read_bytes(location, expected_sha256=expected), source=location)
