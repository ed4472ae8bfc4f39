"""Your own dataset: videos listed in CSV files, one per subset and split.

Stage: listing, before ingestion. The layout is the one DeepMind's video
readers (dmvr) use. A folder (local or `gs://`) holds `train_<N>.csv` and
`test_<N>.csv` for each split N (one split is enough), each with a header
naming at least the columns `video_path,start,end,label` (others, such as
dmvr's `caption`, are ignored):

- `video_path`: absolute (`/...`, `gs://...`, `https://...`, used as
  written) or relative to the video root (joined with '/').
- `start`, `end`: a segment in seconds; either may be empty (the video's
  start, its end). The segment is cut before re-encoding.
- `label`: the class name. Names are numbered in sorted order, unless the
  folder holds `classes.txt` (one name per line), which fixes the numbering.

A video is a file and its segment: segments of one file are distinct videos
(in one group, so a validation split keeps them together). Its name is the
path as written, with `#t=<start>,<end>` for a segment (W3C media-fragment
notation), and its id that name percent-encoded, so ids do not change when
the video root moves.
"""

import csv
import dataclasses
import io
import math
import re
from collections.abc import Sequence

from mmv_core.datasets import dataset_listing
from mmv_core.video import sources
from mmv_core.datasets.dataset_listing import ListingError, TEST, TRAIN

REQUIRED_COLUMNS = ("video_path", "start", "end", "label")
CLASSES_FILE = "classes.txt"

_CSV_FILE = re.compile(r"^(?P<role>train|test)_(?P<split>\d+)\.csv$")


@dataclasses.dataclass(frozen=True)
class CsvRow:
  """One data row of a split CSV.

  Attributes:
    where: `<file>:<line>`, for error messages.
    video_path: as written in the file.
    start_s, end_s: segment bounds in seconds; None where the cell is empty.
    label_name: class name.
  """

  where: str
  video_path: str
  start_s: float | None
  end_s: float | None
  label_name: str


def segment_name(video_path: str, start_s: float | None, end_s: float | None) -> str:
  """`video_path`, plus `#t=<start>,<end>` when a segment bound is given."""
  if start_s is None and end_s is None:
    return video_path
  start = "" if start_s is None else repr(start_s)
  end = "" if end_s is None else f",{end_s!r}"
  return f"{video_path}#t={start}{end}"


def _seconds(cell: str, column: str, where: str) -> float | None:
  if not cell.strip():
    return None
  try:
    value = float(cell)
  except ValueError:
    raise ListingError(f"{where}: {column} {cell!r} is not a number of seconds") from None
  if not math.isfinite(value) or value < 0:
    raise ListingError(f"{where}: {column} {cell!r} is not a time (finite, >= 0 seconds)")
  return value


def parse_csv(data: bytes, path: str) -> list[CsvRow]:
  """The data rows of one split CSV; blank lines are skipped.

  Args:
    data: the file's bytes (UTF-8; a byte-order mark is skipped).
    path: the file's location, for error messages.

  Raises:
    ListingError: `<path>:<line>:` no header or a required column missing,
      a row with too few cells, an empty video path or label, a bound that
      is not a non-negative number, or end <= start.
  """
  reader = csv.reader(io.StringIO(dataset_listing.decode_text(data, path), newline=""))
  header = [name.strip() for name in next(reader, [])]
  missing = [c for c in REQUIRED_COLUMNS if c not in header]
  if missing:
    raise ListingError(
        f"{path}:1: header {header} lacks columns {missing} "
        f"(expected {','.join(REQUIRED_COLUMNS)})"
    )
  column = {name: header.index(name) for name in REQUIRED_COLUMNS}
  rows = []
  for cells in reader:
    where = f"{path}:{reader.line_num}"
    if not any(cell.strip() for cell in cells):
      continue
    if len(cells) < len(header):
      raise ListingError(f"{where}: {len(cells)} cells, the header names {len(header)}")
    video_path = cells[column["video_path"]].strip()
    label_name = cells[column["label"]].strip()
    if not video_path or not label_name:
      raise ListingError(f"{where}: empty {'video_path' if not video_path else 'label'}")
    start_s = _seconds(cells[column["start"]], "start", where)
    end_s = _seconds(cells[column["end"]], "end", where)
    if start_s is not None and end_s is not None and end_s <= start_s:
      raise ListingError(f"{where}: end {end_s:g} s is not after start {start_s:g} s")
    rows.append(
        CsvRow(
            where=where, video_path=video_path, start_s=start_s, end_s=end_s, label_name=label_name
        )
    )
  return rows


def parse_classes(data: bytes, path: str) -> list[str]:
  """Class names of a `classes.txt`, one per line, in label order.

  Raises:
    ListingError: `<path>:<line>:` a name repeats; or the file names none.
  """
  names: dict[str, int] = {}  # name -> line
  for line_number, line in enumerate(dataset_listing.decode_text(data, path).splitlines(), start=1):
    name = line.strip()
    if name in names:
      raise ListingError(f"{path}:{line_number}: class {name!r} repeats line {names[name]}")
    if name:
      names[name] = line_number
  if not names:
    raise ListingError(f"{path}: no class names")
  return list(names)


def listing_from_rows(
    rows: dict[tuple[str, int], list[CsvRow]],
    *,
    class_names: Sequence[str] | None = None,
    video_root: str | None = None,
) -> dataset_listing.DatasetListing:
  """The dataset listed by parsed split CSVs.

  Args:
    rows: (TRAIN or TEST, split) -> that CSV's rows.
    class_names: label order from `classes.txt`; None: sorted label names.
    video_root: where relative video paths live; None when all are absolute.

  Raises:
    ListingError: a split lacks its train or test file; a label is not in
      `class_names`; a relative path without a video root; a video with two
      labels, or both train and test in one split (naming both rows).
  """
  splits = sorted({split for _, split in rows})
  for split in splits:
    for role in (TRAIN, TEST):
      if (role, split) not in rows:
        present = TEST if role == TRAIN else TRAIN
        raise ListingError(f"split {split} has {present}_{split}.csv but no {role}_{split}.csv")
  all_rows = [row for key in sorted(rows) for row in rows[key]]
  if not all_rows:
    raise ListingError("the split CSVs list no videos")
  if class_names is None:
    class_names = sorted({row.label_name for row in all_rows})
  label_of = {name: label for label, name in enumerate(class_names)}

  first_row: dict[tuple[str, float | None, float | None], CsvRow] = {}
  roles: dict[tuple[str, float | None, float | None], dict[int, tuple[str, CsvRow]]] = {}
  for (role, split), split_rows in sorted(rows.items()):
    for row in split_rows:
      if row.label_name not in label_of:
        raise ListingError(f"{row.where}: label {row.label_name!r} is not in {CLASSES_FILE}")
      if dataset_listing.is_absolute(row.video_path):
        location = row.video_path
      elif video_root:
        location = dataset_listing.join_location(video_root, row.video_path)
      else:
        raise ListingError(
            f"{row.where}: relative video_path {row.video_path!r} needs a video root"
        )
      video = (location, row.start_s, row.end_s)
      first = first_row.setdefault(video, row)
      if first.label_name != row.label_name:
        raise ListingError(
            f"{row.where}: {row.video_path!r} is labelled {row.label_name!r} "
            f"here and {first.label_name!r} at {first.where}"
        )
      first_role, first_role_row = roles.setdefault(video, {}).setdefault(split, (role, row))
      if first_role != role:
        raise ListingError(
            f"{row.where}: {row.video_path!r} is {role} in split {split} here "
            f"and {first_role} at {first_role_row.where}"
        )

  videos = []
  for video, row in first_row.items():
    location, start_s, end_s = video
    name = segment_name(row.video_path, start_s, end_s)
    videos.append(
        dataset_listing.ListedVideo(
            video_id=dataset_listing.safe_video_id(name),
            name=name,
            location=location,
            label=label_of[row.label_name],
            label_name=row.label_name,
            roles=tuple(sorted((split, role) for split, (role, _) in roles[video].items())),
            group=dataset_listing.safe_video_id(row.video_path),
            start_s=start_s,
            end_s=end_s,
        )
    )
  return dataset_listing.make_listing(class_names, videos)


def list_videos(csv_dir: str, video_root: str | None = None) -> dataset_listing.DatasetListing:
  """Reads the split CSVs (and `classes.txt`, if there) of `csv_dir`.

  Args:
    csv_dir: local folder or `gs://` prefix.
    video_root: folder, `gs://` prefix or `http(s)://` URL that relative
      video paths are under.

  Raises:
    ListingError: no split CSVs; a CSV whose name is not `train_<N>.csv` or
      `test_<N>.csv`; anything `parse_csv`, `parse_classes` or
      `listing_from_rows` rejects.
  """
  rows = {}
  for path in dataset_listing.files_in(csv_dir, "*.csv"):
    match = _CSV_FILE.match(path.rsplit("/", 1)[-1])
    if not match:
      raise ListingError(f"{path}: not a split CSV; expected train_<N>.csv or test_<N>.csv")
    rows[match["role"], int(match["split"])] = parse_csv(sources.read_bytes(path), path)
  if not rows:
    raise ListingError(f"{csv_dir}: no train_<N>.csv or test_<N>.csv")
  classes_paths = dataset_listing.files_in(csv_dir, CLASSES_FILE)
  class_names = (
      parse_classes(sources.read_bytes(classes_paths[0]), classes_paths[0])
      if classes_paths
      else None
  )
  return listing_from_rows(rows, class_names=class_names, video_root=video_root)
