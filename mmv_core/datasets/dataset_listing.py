"""What every dataset's listing gives: its classes and one record per video.

Stage: the start of ingestion and of the linear evaluation. Each dataset
(`mmv_core.datasets`) lists its videos from its own files (UCF101's
split-list zip, HMDB51's split folder, a folder of CSVs); all of them give a
`DatasetListing` of `ListedVideo` records, so the jobs handle one type.

Video ids are cache keys, TFRecord fields and report entries, while real
file names hold spaces, `!&()';[]#+` and non-ASCII letters. `safe_video_id`
percent-encodes a name: the id keeps letters, digits and `_.-~`, every other
character becomes `%XX` escapes of its UTF-8 bytes. The mapping is
deterministic and reversible (`urllib.parse.unquote` gives the name back), so
distinct names give distinct ids; the record keeps the name for display too.
"""

import collections
import dataclasses
import itertools
import re
import urllib.parse
from collections.abc import Sequence

from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems

from mmv_core.datasets import ucf101

TRAIN = ucf101.TRAIN
TEST = ucf101.TEST

# `scheme://`: gs://, http://, https:// and any other URL-style location.
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ListingError(ValueError):
  """A dataset's listing files are malformed or inconsistent.

  Messages start with `<file>:<line>:` where a line is to blame.
  """


def files_in(folder: str, pattern: str) -> list[str]:
  """Paths of the files in `folder` (local or `gs://`) whose names match `pattern` (a glob).

  Raises:
    ListingError: the folder cannot be listed (a missing folder lists nothing).
  """
  try:
    return sorted(
        m.path for m in FileSystems.match([f"{folder.rstrip('/')}/{pattern}"])[0].metadata_list
    )
  except BeamIOError as e:
    raise ListingError(f"{folder}: cannot list files ({e})") from e


def decode_text(data: bytes, path: str) -> str:
  """UTF-8 `data` as text, without a byte-order mark.

  Raises:
    ListingError: `<path>:<line>:` where the bytes are not UTF-8.
  """
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line_number = data[: e.start].count(b"\n") + 1
    raise ListingError(f"{path}:{line_number}: not UTF-8 ({e.reason})") from None


def safe_video_id(name: str) -> str:
  """`name` percent-encoded: only letters, digits, `_.-~` and `%XX` remain."""
  return urllib.parse.quote(name, safe="")


def is_absolute(location: str) -> bool:
  """True for a URL (`gs://...`, `https://...`) or an absolute local path."""
  return location.startswith("/") or bool(_URL_SCHEME.match(location))


def join_location(root: str, relative_path: str) -> str:
  """The location of `relative_path` ('/'-separated) under `root`.

  Args:
    root: a local folder, a `gs://` prefix or an `http(s)://` URL.
    relative_path: a file path as written in a listing, e.g. `cls/a b#1.avi`.

  Returns:
    `root/relative_path`. Under an `http(s)://` root the path is
    percent-encoded first: it names a file, and characters such as `#`, `?`
    and spaces mean something else in a URL.
  """
  if root.startswith(("http://", "https://")):
    relative_path = urllib.parse.quote(relative_path)
  return f"{root.rstrip('/')}/{relative_path}"


@dataclasses.dataclass(frozen=True)
class ListedVideo:
  """One video of a dataset, as every job sees it.

  Attributes:
    video_id: unique within the dataset and safe as a cache key, file-name
      part or TFRecord field (see the module docstring); e.g.
      `v_ApplyEyeMakeup_g08_c01`, `Am%C3%A9lie%27s%20walk_brush_hair_0`.
    name: the video as the dataset's listing spells it, for display, e.g.
      `Amélie's walk_brush_hair_0.avi`, or `clips/a.mp4#t=12.5,20.0` for a
      CSV segment (W3C media-fragment notation).
    location: where the video's bytes are: a local path, `gs://` or
      `http(s)://` URL, or, for UCF101, the member's name in the video ZIP.
    label: 0-based class index into `DatasetListing.class_names`.
    label_name: class name.
    roles: `(split, TRAIN or TEST)` for each split that uses the video,
      in split order.
    group: videos of one group share their source (UCF101's `gGG` actors and
      scenes, a CSV's segments of one file) and must stay on one side of a
      held-out validation part; the video's own id where nothing is shared.
    start_s: segment start in seconds from the video's start; None: from
      the beginning.
    end_s: segment end in seconds; None: to the video's end.
  """

  video_id: str
  name: str
  location: str
  label: int
  label_name: str
  roles: tuple[tuple[int, str], ...]
  group: str
  start_s: float | None = None
  end_s: float | None = None

  def role(self, split: int) -> str | None:
    """TRAIN, TEST, or None when `split` does not use the video."""
    return dict(self.roles).get(split)


@dataclasses.dataclass(frozen=True)
class DatasetListing:
  """A dataset's classes, splits and every video some split uses, sorted by id."""

  class_names: tuple[str, ...]
  splits: tuple[int, ...]
  videos: tuple[ListedVideo, ...]

  def videos_in(self, split: int, role: str) -> list[ListedVideo]:
    return [v for v in self.videos if v.role(split) == role]

  def split_counts(self) -> dict[int, tuple[int, int]]:
    """(train videos, test videos) of each split."""
    return {s: (len(self.videos_in(s, TRAIN)), len(self.videos_in(s, TEST))) for s in self.splits}

  def select(
      self, classes: Sequence[str] | None = None, max_videos: int | None = None
  ) -> list[ListedVideo]:
    """Videos of `classes` (all when None), at most `max_videos` of them, sorted by id.

    The limit takes videos round-robin over classes (each class's in id
    order), so a small trial still covers every selected class.

    Raises:
      ListingError: a class in `classes` is not among `class_names`.
      ValueError: `max_videos` is below 1.
    """
    if max_videos is not None and max_videos < 1:
      raise ValueError(f"max_videos must be at least 1, got {max_videos}")
    unknown = sorted(set(classes or ()) - set(self.class_names))
    if unknown:
      raise ListingError(f"unknown classes {unknown}; known: {list(self.class_names)}")
    wanted = set(classes) if classes else set(self.class_names)
    per_class: dict[str, list[ListedVideo]] = {}
    for video in self.videos:
      if video.label_name in wanted:
        per_class.setdefault(video.label_name, []).append(video)
    round_robin = [
        video
        for rank in itertools.zip_longest(*per_class.values())
        for video in rank
        if video is not None
    ]
    return sorted(round_robin[:max_videos], key=lambda v: v.video_id)


def make_listing(class_names: Sequence[str], videos: Sequence[ListedVideo]) -> DatasetListing:
  """Sorts `videos` by id; the splits are those some video has a role in.

  Raises:
    ListingError: two videos share an id (names that differ only where an id
      cannot tell them apart, e.g. `a.avi` and `a` where the id drops `.avi`).
  """
  by_id = collections.defaultdict(list)
  for video in videos:
    by_id[video.video_id].append(video.name)
  shared = {video_id: names for video_id, names in by_id.items() if len(names) > 1}
  if shared:
    video_id, names = sorted(shared.items())[0]
    raise ListingError(f"{len(shared)} video ids are shared, e.g. {video_id!r} by {names}")
  splits = sorted({split for video in videos for split, _ in video.roles})
  return DatasetListing(
      class_names=tuple(class_names),
      splits=tuple(splits),
      videos=tuple(sorted(videos, key=lambda v: v.video_id)),
  )
