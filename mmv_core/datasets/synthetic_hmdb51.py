"""Synthetic HMDB51: a small dataset in the extracted layout, with awkward names.

Stage: test and demo data for HMDB51 listing, ingestion and evaluation.
Writes `<out>/videos/<class>/<video>.avi` (the tree users get by extracting
the official RARs) and `<out>/testTrainMulti_7030_splits/` with
`<class>_test_split<N>.txt` for splits 1-3, lines `<file name> <id> ` with
the trailing space of the official files. Videos are drawn and encoded as
synthetic UCF101's are (`mmv_core.datasets.synthetic`): each class is a shape moving
its own way, so a linear classifier has something to learn.

Class names have underscores, as HMDB51's (`synth_class_a`). Video file names
hold the characters real HMDB51 names hold: spaces, `!&()';[]#+` and
non-ASCII letters. Video i of a class is a test video in split
`i % 3 + 1` and a training video in the others, except that the last video
of each class is unused (id 0) in split 1, as the official files mark
videos a split leaves out.

CLI: `python -m mmv_core.datasets.synthetic_hmdb51 OUT_DIR --classes 3 --videos_per_class 4`.
"""

import argparse
import dataclasses
import json
import os
import string
from collections.abc import Sequence

import numpy as np

from mmv_core.datasets import hmdb51
from mmv_core.datasets import synthetic

VIDEO_DIR = "videos"
TRAIN_ID, TEST_ID, UNUSED_ID = 1, 2, 0
# Each video name starts with one of these, in turn.
AWKWARD_NAME_PARTS = (
    "Amélie's walk",
    "Rock & Roll!",
    "(take 2) [HD]",
    "No#1+2; Ça va",
    "Größe_Ärger",
)


@dataclasses.dataclass(frozen=True)
class SyntheticHmdbVideo:
  """One planned video: its file, class and official id in each split.

  Attributes:
    file_name: e.g. `Rock & Roll!_synth_class_a_1.avi`.
    label: index of `label_name` in the sorted class names.
    label_name: class folder name.
    split_ids: id in splits 1, 2, 3: 1 train, 2 test, 0 unused.
  """

  file_name: str
  label: int
  label_name: str
  split_ids: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class SyntheticHmdb51:
  """Paths of a written dataset and what it contains."""

  video_root: str
  splits_dir: str
  class_names: tuple[str, ...]
  videos: tuple[SyntheticHmdbVideo, ...]


def class_names(num_classes: int) -> list[str]:
  """Sorted HMDB51-style names: lower case with underscores."""
  return sorted(
      f"synth_class_{string.ascii_lowercase[i % 26] * (i // 26 + 1)}" for i in range(num_classes)
  )


def plan_videos(names: Sequence[str], videos_per_class: int) -> list[SyntheticHmdbVideo]:
  """Names every video and gives it its id in each split (module docstring)."""
  videos = []
  for label, name in enumerate(names):
    for index in range(videos_per_class):
      part = AWKWARD_NAME_PARTS[(label + index) % len(AWKWARD_NAME_PARTS)]
      split_ids = tuple(
          UNUSED_ID
          if split == 1 and index == videos_per_class - 1
          else TEST_ID
          if index % len(hmdb51.SPLITS) == split - 1
          else TRAIN_ID
          for split in hmdb51.SPLITS
      )
      videos.append(
          SyntheticHmdbVideo(
              file_name=f"{part}_{name}_{index}.avi",
              label=label,
              label_name=name,
              split_ids=split_ids,
          )
      )
  return videos


def write_split_files(
    splits_dir: str, names: Sequence[str], videos: Sequence[SyntheticHmdbVideo]
) -> None:
  """Writes `<class>_test_split<N>.txt` for every class and split (UTF-8)."""
  os.makedirs(splits_dir, exist_ok=True)
  for name in names:
    for split_index, split in enumerate(hmdb51.SPLITS):
      lines = [
          f"{v.file_name} {v.split_ids[split_index]} \n" for v in videos if v.label_name == name
      ]
      with open(
          os.path.join(splits_dir, hmdb51.split_file_name(name, split)),
          "w",
          encoding="utf-8",
          newline="",
      ) as f:
        f.writelines(lines)


def write_dataset(
    out_dir: str,
    *,
    num_classes: int = 3,
    videos_per_class: int = 4,
    width: int = 320,
    height: int = 240,
    fps: float = 30.0,
    duration_s: float = 2.0,
    seed: int = 0,
) -> SyntheticHmdb51:
  """Writes the video tree and the split folder under `out_dir`.

  Args:
    out_dir: created if missing.
    num_classes: number of classes.
    videos_per_class: videos per class.
    width, height: frame size in pixels (even); HMDB51 is mostly 320x240.
    fps, duration_s: source frame rate and length of each video in seconds.
    seed: makes the dataset reproducible.
  """
  names = class_names(num_classes)
  videos = plan_videos(names, videos_per_class)
  rng = np.random.default_rng(seed)
  video_root = os.path.join(out_dir, VIDEO_DIR)
  for planned in videos:
    os.makedirs(os.path.join(video_root, planned.label_name), exist_ok=True)
    with open(os.path.join(video_root, planned.label_name, planned.file_name), "wb") as f:
      f.write(
          synthetic.video_bytes(
              planned.label,
              len(names),
              rng,
              width=width,
              height=height,
              fps=fps,
              duration_s=duration_s,
          )
      )
  splits_dir = os.path.join(out_dir, hmdb51.SPLITS_DIR_NAME)
  write_split_files(splits_dir, names, videos)
  return SyntheticHmdb51(
      video_root=video_root, splits_dir=splits_dir, class_names=tuple(names), videos=tuple(videos)
  )


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("out_dir")
  parser.add_argument("--classes", type=int, default=3)
  parser.add_argument("--videos_per_class", type=int, default=4)
  parser.add_argument("--width", type=int, default=320)
  parser.add_argument("--height", type=int, default=240)
  parser.add_argument("--fps", type=float, default=30.0)
  parser.add_argument("--duration_s", type=float, default=2.0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  dataset = write_dataset(
      args.out_dir,
      num_classes=args.classes,
      videos_per_class=args.videos_per_class,
      width=args.width,
      height=args.height,
      fps=args.fps,
      duration_s=args.duration_s,
      seed=args.seed,
  )
  print(
      json.dumps(
          {
              "video_root": dataset.video_root,
              "splits_dir": dataset.splits_dir,
              "classes": list(dataset.class_names),
              "videos": len(dataset.videos),
          },
          indent=2,
          ensure_ascii=False,
      )
  )


if __name__ == "__main__":
  main()
