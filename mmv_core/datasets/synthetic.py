"""Synthetic UCF101: a small dataset in exactly the real archives' layout.

Stage: test and benchmark data for ingestion and the linear evaluation.
Writes `UCF101_videos.zip` (flat `UCF101/v_<Class>_gGG_cCC.avi`, MPEG-4 part 2
AVIs tagged XVID like the originals) and
`UCF101TrainTestSplits-RecognitionTask.zip` (`ucfTrainTestlist/classInd.txt`
and the six lists, CRLF line endings). With `include_handstand_pushups` the
lists spell that class's files `v_HandStandPushups_*` while the video ZIP
names them `v_HandstandPushups_*`, as in the real data.

Each class is a shape (disk, square, bar) moving in its own direction at its
own speed over a noisy background; colour, start position and background
vary per video, so the class lives in the motion and shape only and a linear
classifier on video features has something to learn.

Groups: clip `c` of group `g` is `v_<Class>_gGG_cCC`; group `g` is a test
group in split `s` when `(g - 1) % 3 == s - 1`, so every split has test
videos once a class has three or more groups. `plan_ucf101_videos` plans the
real dataset's structure instead: 25 groups per class, groups 1-7, 8-14 and
15-21 the test groups of splits 1, 2 and 3 (22-25 always train), as in the
official lists.

CLI: `python -m mmv_core.datasets.synthetic OUT_DIR --classes 5 --videos_per_class 6`.
"""

import argparse
import dataclasses
import io
import json
import math
import os
import string
import subprocess
import tempfile
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np

from mmv_core.video import encode
from mmv_core.datasets import ucf101

VIDEO_ZIP_NAME = "UCF101_videos.zip"
SPLITS_ZIP_NAME = "UCF101TrainTestSplits-RecognitionTask.zip"
SPLITS_DIR = "ucfTrainTestlist"
HANDSTAND_CLASS = "HandstandPushups"
HANDSTAND_LIST_SPELLING = "HandStandPushups"
SHAPES = ("Disk", "Square", "Bar")
# Fixed member timestamps keep archives byte-identical across runs.
_ZIP_DATE_TIME = (2020, 1, 1, 0, 0, 0)
_SPLIT_LINE_ENDING = "\r\n"


# The official lists' structure: groups per class, and test groups per split.
UCF101_GROUPS_PER_CLASS = 25
UCF101_TEST_GROUPS_PER_SPLIT = 7


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
  """One planned video: its id in the video ZIP and its line in the split lists.

  `official_splits`: the official lists' rule of test groups (groups 1-7
  test in split 1, 8-14 in split 2, 15-21 in split 3) instead of every third
  group.
  """

  video_id: str
  label: int
  label_name: str
  list_entry: str
  group: int
  official_splits: bool = False

  @property
  def member_name(self) -> str:
    return f"{ucf101.VIDEO_MEMBER_DIR}/{self.video_id}.avi"

  def role(self, split: int) -> str:
    if self.official_splits:
      test_split = (self.group - 1) // UCF101_TEST_GROUPS_PER_SPLIT + 1
    else:
      test_split = (self.group - 1) % 3 + 1
    return ucf101.TEST if test_split == split else ucf101.TRAIN


@dataclasses.dataclass(frozen=True)
class SyntheticDataset:
  """Paths of a written dataset and what it contains."""

  video_zip: str
  splits_zip: str
  class_names: tuple[str, ...]
  videos: tuple[SyntheticVideo, ...]

  def split_counts(self) -> dict[int, tuple[int, int]]:
    """(train, test) videos per split, as `EXPECTED_SPLIT_COUNTS` gives them."""
    return {
        s: (
            sum(v.role(s) == ucf101.TRAIN for v in self.videos),
            sum(v.role(s) == ucf101.TEST for v in self.videos),
        )
        for s in ucf101.SPLITS
    }


def class_names(num_classes: int, include_handstand_pushups: bool = False) -> list[str]:
  """Alphabetically sorted class names (`classInd.txt` order), letters only."""
  names = []
  for index in range(num_classes - int(include_handstand_pushups)):
    letters = string.ascii_uppercase[index % 26] * (index // 26 + 1)
    names.append(f"Synth{SHAPES[index % len(SHAPES)]}{letters}")
  if include_handstand_pushups:
    names.append(HANDSTAND_CLASS)
  return sorted(names)


def _motion(label: int, num_classes: int) -> tuple[int, float, float]:
  """(shape index, heading in radians, speed in frame widths per second)."""
  heading = 2 * math.pi * label / num_classes
  speed = 0.25 + 0.25 * (label % 2)
  return label % len(SHAPES), heading, speed


def render_frames(
    label: int,
    num_classes: int,
    rng: np.random.Generator,
    *,
    width: int,
    height: int,
    num_frames: int,
    fps: float,
) -> np.ndarray:
  """Draws one video of class `label`: uint8 RGB frames [num_frames, height, width, 3]."""
  shape, heading, speed = _motion(label, num_classes)
  background = rng.integers(40, 120, size=3)
  colour = rng.integers(150, 256, size=3)
  centre = rng.uniform(0, 1, size=2) * (width, height)
  velocity = np.array([math.cos(heading), math.sin(heading)]) * speed * width / fps
  radius = max(2.0, min(width, height) / 6)
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for t in range(num_frames):
    cx, cy = centre + velocity * t
    # Offsets wrap around the frame edges so the shape never leaves the frame.
    dx = (xs - cx + width / 2) % width - width / 2
    dy = (ys - cy + height / 2) % height - height / 2
    if SHAPES[shape] == "Disk":
      mask = dx * dx + dy * dy <= radius * radius
    elif SHAPES[shape] == "Square":
      mask = (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    else:
      mask = (np.abs(dx) <= radius * 1.6) & (np.abs(dy) <= radius * 0.4)
    noise = rng.integers(-12, 13, size=(height, width, 1))
    frame = np.clip(background + noise, 0, 255)
    frame[mask] = colour
    frames[t] = frame
  return frames


def video_bytes(
    label: int,
    num_classes: int,
    rng: np.random.Generator,
    *,
    width: int,
    height: int,
    fps: float,
    duration_s: float,
) -> bytes:
  """One synthetic video of class `label`, `duration_s` long at `fps`, as AVI bytes."""
  frames = render_frames(
      label,
      num_classes,
      rng,
      width=width,
      height=height,
      num_frames=max(1, round(fps * duration_s)),
      fps=fps,
  )
  return encode_avi(frames, fps)


def encode_avi(frames: np.ndarray, fps: float) -> bytes:
  """Encodes uint8 RGB frames [T, H, W, 3] (H, W even) as an MPEG-4 AVI."""
  num_frames, height, width, _ = frames.shape
  if height % 2 or width % 2:
    raise ValueError(f"frame size {width}x{height}: MPEG-4 needs even dimensions")
  with tempfile.TemporaryDirectory(prefix="mmv_synthetic_") as tmp:
    # The AVI muxer seeks back to finish its header, so it cannot write to a pipe.
    path = os.path.join(tmp, "video.avi")
    command = [
        encode.ffmpeg_executable(),
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-r",
        str(fps),
        "-i",
        "pipe:0",
        "-frames:v",
        str(num_frames),
        "-c:v",
        "mpeg4",
        "-vtag",
        "XVID",
        "-qscale:v",
        "4",
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
        "-fflags",
        "+bitexact",
        "-flags",
        "+bitexact",
        path,
    ]
    result = subprocess.run(command, input=frames.tobytes(), capture_output=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(
          f"ffmpeg failed to encode a synthetic video: "
          f"{result.stderr.decode('utf-8', 'replace')[-600:]}"
      )
    with open(path, "rb") as f:
      return f.read()


def _planned_video(
    names: Sequence[str], label: int, group: int, clip: int, official_splits: bool = False
) -> SyntheticVideo:
  """Clip `clip` of group `group` of class `label`, named as UCF101 names it."""
  name = names[label]
  list_spelling = HANDSTAND_LIST_SPELLING if name == HANDSTAND_CLASS else name
  suffix = f"g{group:02d}_c{clip:02d}"
  return SyntheticVideo(
      video_id=f"v_{name}_{suffix}",
      label=label,
      label_name=name,
      list_entry=f"{name}/v_{list_spelling}_{suffix}.avi",
      group=group,
      official_splits=official_splits,
  )


def plan_videos(
    names: Sequence[str], videos_per_class: int, clips_per_group: int = 2
) -> list[SyntheticVideo]:
  """Names every video: `videos_per_class` clips per class, in groups of `clips_per_group`."""
  return [
      _planned_video(names, label, index // clips_per_group + 1, index % clips_per_group + 1)
      for label in range(len(names))
      for index in range(videos_per_class)
  ]


def plan_ucf101_videos(names: Sequence[str], num_videos: int) -> list[SyntheticVideo]:
  """Names `num_videos` videos in the real dataset's structure (see the module docstring).

  Classes get equal shares (the first ones one more), each spread over 25
  groups as evenly as it goes: the full 13,320 videos make groups of 5 or 6
  clips, where the real ones have 4 to 7.
  """
  videos = []
  per_class, extra_classes = divmod(num_videos, len(names))
  for label in range(len(names)):
    per_group, extra = divmod(per_class + (label < extra_classes), UCF101_GROUPS_PER_CLASS)
    for group in range(1, UCF101_GROUPS_PER_CLASS + 1):
      # The groups with one clip more are spread evenly, so the splits weigh alike.
      one_more = (
          group * extra // UCF101_GROUPS_PER_CLASS - (group - 1) * extra // UCF101_GROUPS_PER_CLASS
      )
      videos += [
          _planned_video(names, label, group, clip, official_splits=True)
          for clip in range(1, per_group + one_more + 1)
      ]
  return videos


def splits_zip_bytes(
    names: Sequence[str], videos: Sequence[SyntheticVideo], line_ending: str = _SPLIT_LINE_ENDING
) -> bytes:
  """The split-list zip: classInd.txt and train/test lists of the three splits."""
  files = {"classInd.txt": [f"{i + 1} {name}" for i, name in enumerate(names)]}
  for split in ucf101.SPLITS:
    files[f"trainlist0{split}.txt"] = [
        f"{v.list_entry} {v.label + 1}" for v in videos if v.role(split) == ucf101.TRAIN
    ]
    files[f"testlist0{split}.txt"] = [v.list_entry for v in videos if v.role(split) == ucf101.TEST]
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
    for file_name, lines in files.items():
      info = zipfile.ZipInfo(f"{SPLITS_DIR}/{file_name}", _ZIP_DATE_TIME)
      info.compress_type = zipfile.ZIP_DEFLATED
      archive.writestr(info, "".join(line + line_ending for line in lines))
  return buffer.getvalue()


def write_video_zip(
    path: str, members: Mapping[str, bytes], compression: int = zipfile.ZIP_DEFLATED
) -> None:
  """Writes `members` (name -> content) to a ZIP at `path`, in the given order."""
  with zipfile.ZipFile(path, "w") as archive:
    for name, content in members.items():
      info = zipfile.ZipInfo(name, _ZIP_DATE_TIME)
      info.compress_type = compression
      archive.writestr(info, content)


def write_dataset(
    out_dir: str,
    *,
    num_classes: int = 5,
    videos_per_class: int = 6,
    clips_per_group: int = 2,
    width: int = 320,
    height: int = 240,
    fps: float = 25.0,
    duration_s: float = 3.0,
    include_handstand_pushups: bool = False,
    compression: int = zipfile.ZIP_DEFLATED,
    seed: int = 0,
) -> SyntheticDataset:
  """Writes the video ZIP and the split-list zip to `out_dir`.

  Args:
    out_dir: created if missing.
    num_classes: number of classes (including HandstandPushups if asked).
    videos_per_class: clips per class.
    clips_per_group: clips per UCF101 group (`gGG`).
    width, height: frame size (even); the real data is mostly 320x240.
    fps, duration_s: source frame rate and length of each video.
    include_handstand_pushups: add that class with its file-name quirk.
    compression: `zipfile.ZIP_DEFLATED` or `zipfile.ZIP_STORED` for the videos.
    seed: makes the dataset reproducible.
  """
  os.makedirs(out_dir, exist_ok=True)
  names = class_names(num_classes, include_handstand_pushups)
  videos = plan_videos(names, videos_per_class, clips_per_group)
  rng = np.random.default_rng(seed)
  members = {
      video.member_name: video_bytes(
          video.label, len(names), rng, width=width, height=height, fps=fps, duration_s=duration_s
      )
      for video in videos
  }
  video_zip = os.path.join(out_dir, VIDEO_ZIP_NAME)
  write_video_zip(video_zip, members, compression)
  splits_zip = os.path.join(out_dir, SPLITS_ZIP_NAME)
  with open(splits_zip, "wb") as f:
    f.write(splits_zip_bytes(names, videos))
  return SyntheticDataset(
      video_zip=video_zip, splits_zip=splits_zip, class_names=tuple(names), videos=tuple(videos)
  )


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      allow_abbrev=False,
      prog="python -m mmv_core.datasets.synthetic",
      description=__doc__.split("\n", 1)[0],
  )
  parser.add_argument("out_dir")
  parser.add_argument("--classes", type=int, default=5)
  parser.add_argument("--videos_per_class", type=int, default=6)
  parser.add_argument("--clips_per_group", type=int, default=2)
  parser.add_argument("--width", type=int, default=320)
  parser.add_argument("--height", type=int, default=240)
  parser.add_argument("--fps", type=float, default=25.0)
  parser.add_argument("--duration_s", type=float, default=3.0)
  parser.add_argument(
      "--handstand_pushups",
      action="store_true",
      help="include HandstandPushups with its file-name quirk",
  )
  parser.add_argument(
      "--stored", action="store_true", help="store videos uncompressed instead of deflating them"
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
      "--loose_videos",
      action="store_true",
      help="also write each video as OUT_DIR/<video id>.avi, e.g. for mmv_core.load_video",
  )
  args = parser.parse_args(argv)
  dataset = write_dataset(
      args.out_dir,
      num_classes=args.classes,
      videos_per_class=args.videos_per_class,
      clips_per_group=args.clips_per_group,
      width=args.width,
      height=args.height,
      fps=args.fps,
      duration_s=args.duration_s,
      include_handstand_pushups=args.handstand_pushups,
      compression=zipfile.ZIP_STORED if args.stored else zipfile.ZIP_DEFLATED,
      seed=args.seed,
  )
  if args.loose_videos:
    with zipfile.ZipFile(dataset.video_zip) as archive:
      for video in dataset.videos:
        with open(os.path.join(args.out_dir, f"{video.video_id}.avi"), "wb") as f:
          f.write(archive.read(video.member_name))
  print(
      json.dumps(
          {
              "video_zip": dataset.video_zip,
              "splits_zip": dataset.splits_zip,
              "classes": list(dataset.class_names),
              "videos": len(dataset.videos),
              "split_counts": dataset.split_counts(),
          },
          indent=2,
      )
  )


if __name__ == "__main__":
  main()
