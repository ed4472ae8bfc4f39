"""HMDB51: the official split files and the extracted `<class>/<video>.avi` tree.

Stage: listing, before ingestion. The split folder
(`testTrainMulti_7030_splits/`, local or under a `gs://` prefix) holds
`<class>_test_split<N>.txt` for every class and split N; the class is
everything before `_test_split` and may contain underscores (`brush_hair`).
Each line is `<video file name> <id>`: 1 training, 2 testing, 0 unused in
that split. Lines may end in spaces, and file names hold spaces, `!&()';[]#+`
and non-ASCII letters, so a line splits at its last run of whitespace.

Labels are indices into the sorted class names (as dmvr's recipe numbers
them). A video lives at `<video_root>/<class>/<file name>`; its id is the
file name without `.avi`, percent-encoded (`dataset_listing.safe_video_id`);
HMDB51 names each video file once across all classes.
"""

import re

from mmv_core.datasets import dataset_listing
from mmv_core.video import sources
from mmv_core.datasets.dataset_listing import ListingError, TEST, TRAIN

SPLITS_DIR_NAME = "testTrainMulti_7030_splits"
SPLITS = (1, 2, 3)
# (train, test) videos of each official split: 70 and 30 in each of 51 classes.
EXPECTED_SPLIT_COUNTS = {split: (3570, 1530) for split in SPLITS}
VIDEO_SUFFIX = ".avi"

_SPLIT_FILE = re.compile(r"^(?P<class_name>.+)_test_split(?P<split>\d+)\.txt$")
_LINE = re.compile(r"^(?P<file_name>.+?)\s+(?P<split_id>\S+)$")
_ROLE_OF_SPLIT_ID = {"1": TRAIN, "2": TEST, "0": None}


def split_file_name(class_name: str, split: int) -> str:
  """`<class>_test_split<N>.txt`, the official name of a split file."""
  return f"{class_name}_test_split{split}.txt"


def parse_split_file(data: bytes, path: str) -> list[tuple[str, str | None, int]]:
  """(video file name, TRAIN / TEST / None, line number) per listed video.

  Args:
    data: the split file's bytes (UTF-8; a byte-order mark is skipped).
    path: the file's location, for error messages.

  Raises:
    ListingError: `<path>:<line>:` a line is not UTF-8, not `<name> <id>`, or
      its id is not 0, 1 or 2; a name is listed twice with different ids.
  """
  first_listing: dict[str, tuple[str | None, int]] = {}  # name -> (role, line)
  text = dataset_listing.decode_text(data, path)
  for line_number, line in enumerate(text.splitlines(), start=1):
    stripped = line.strip()
    if not stripped:
      continue
    match = _LINE.match(stripped)
    if not match or match["split_id"] not in _ROLE_OF_SPLIT_ID:
      raise ListingError(
          f"{path}:{line_number}: expected '<video file name> <0, 1 or 2>', got {line!r}"
      )
    file_name, role = match["file_name"], _ROLE_OF_SPLIT_ID[match["split_id"]]
    first_role, first_line = first_listing.setdefault(file_name, (role, line_number))
    if first_role != role:
      raise ListingError(
          f"{path}:{line_number}: {file_name!r} has a different id than on line {first_line}"
      )
  return [(name, role, line) for name, (role, line) in first_listing.items()]


def list_videos(splits_dir: str, video_root: str) -> dataset_listing.DatasetListing:
  """Lists every video some split uses, from the official split folder.

  Args:
    splits_dir: folder or `gs://` prefix holding the split files.
    video_root: folder or `gs://` prefix holding `<class>/<video>.avi`.

  Returns:
    The classes (sorted), the splits found and one record per video with a
    role in at least one split; videos marked 0 in every split are left out.

  Raises:
    ListingError: no split files; a class lacks a split file that other
      classes have; a file is malformed (see `parse_split_file`); a video is
      listed under two classes.
  """
  files = {}  # (class name, split) -> path
  for path in dataset_listing.files_in(splits_dir, "*.txt"):
    match = _SPLIT_FILE.match(path.rsplit("/", 1)[-1])
    if match:
      files[match["class_name"], int(match["split"])] = path
  if not files:
    raise ListingError(f"{splits_dir}: no split files named '<class>_test_split<N>.txt'")
  class_names = sorted({class_name for class_name, _ in files})
  label_of = {name: label for label, name in enumerate(class_names)}
  splits = sorted({split for _, split in files})
  missing = [split_file_name(c, s) for c in class_names for s in splits if (c, s) not in files]
  if missing:
    raise ListingError(f"{splits_dir}: missing split files {missing}")

  class_of_video: dict[str, tuple[str, str]] = {}  # file name -> (class, where listed)
  roles: dict[str, list[tuple[int, str]]] = {}
  for (class_name, split), path in sorted(files.items()):
    for file_name, role, line_number in parse_split_file(sources.read_bytes(path), path):
      where = f"{path}:{line_number}"
      listed_class, first_where = class_of_video.setdefault(file_name, (class_name, where))
      if listed_class != class_name:
        raise ListingError(
            f"{where}: {file_name!r} is listed under class {class_name!r} "
            f"here and under {listed_class!r} at {first_where}"
        )
      if role is not None:
        roles.setdefault(file_name, []).append((split, role))

  videos = []
  for file_name, video_roles in roles.items():
    class_name = class_of_video[file_name][0]
    video_id = dataset_listing.safe_video_id(file_name.removesuffix(VIDEO_SUFFIX))
    videos.append(
        dataset_listing.ListedVideo(
            video_id=video_id,
            name=file_name,
            location=dataset_listing.join_location(video_root, f"{class_name}/{file_name}"),
            label=label_of[class_name],
            label_name=class_name,
            roles=tuple(sorted(video_roles)),
            group=video_id,
        )
    )
  return dataset_listing.make_listing(class_names, videos)
