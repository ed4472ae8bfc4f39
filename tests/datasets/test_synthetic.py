"""Synthetic UCF101: the real archives' layout, decodable videos, separable classes."""

import math
import zipfile

import numpy as np

from mmv_core.video import encode
from mmv_core.datasets import synthetic
from mmv_core.datasets import ucf101


def test_layout_matches_the_real_archives(tiny_dataset):
  with zipfile.ZipFile(tiny_dataset.video_zip) as archive:
    names = archive.namelist()
    assert names == [f"UCF101/{v.video_id}.avi" for v in tiny_dataset.videos]
    assert all(archive.read(n)[8:12] == b"AVI " for n in names)
  with zipfile.ZipFile(tiny_dataset.splits_zip) as archive:
    assert sorted(archive.namelist()) == sorted(
        ["ucfTrainTestlist/classInd.txt"]
        + [f"ucfTrainTestlist/{r}list0{s}.txt" for r in ("train", "test") for s in (1, 2, 3)]
    )
    class_ind = archive.read("ucfTrainTestlist/classInd.txt").decode()
  assert class_ind.startswith("1 HandstandPushups\r\n2 Synth")
  lists = ucf101.load_split_lists(tiny_dataset.splits_zip)
  assert lists.split_counts() == tiny_dataset.split_counts()
  assert all(c[1] > 0 for c in lists.split_counts().values())


def test_videos_have_the_requested_size(tiny_dataset):
  with zipfile.ZipFile(tiny_dataset.video_zip) as archive:
    avi = archive.read(archive.namelist()[0])
  frames = encode.encode_jpeg_frames(avi)
  assert len(frames) == 25  # 1 s at the protocol's 25 fps.
  # SOF0 segment: precision, height, width.
  sof = frames[0].index(b"\xff\xc0")
  assert (
      int.from_bytes(frames[0][sof + 5 : sof + 7], "big"),
      int.from_bytes(frames[0][sof + 7 : sof + 9], "big"),
  ) == (48, 64)


def _mean_velocity(frames: np.ndarray) -> np.ndarray:
  """Mean per-frame displacement (x, y) of the bright shape, frames uint8 [T, H, W, 3]."""
  _, height, width, _ = frames.shape
  positions = []
  for frame in frames:
    ys, xs = np.nonzero(frame.min(axis=-1) > 140)
    # Circular means, since the shape wraps around the frame edges.
    angle_x = np.angle(np.exp(2j * np.pi * xs / width).mean())
    angle_y = np.angle(np.exp(2j * np.pi * ys / height).mean())
    positions.append((angle_x * width / (2 * np.pi), angle_y * height / (2 * np.pi)))
  steps = np.diff(np.array(positions), axis=0)
  steps = (steps + [width / 2, height / 2]) % [width, height] - [width / 2, height / 2]
  return steps.mean(axis=0)


def test_classes_differ_in_motion_not_in_per_video_randomness():
  num_classes, rng = 4, np.random.default_rng(1)
  velocities = {
      label: [
          _mean_velocity(
              synthetic.render_frames(
                  label, num_classes, rng, width=64, height=48, num_frames=8, fps=10.0
              )
          )
          for _ in range(3)
      ]
      for label in range(num_classes)
  }
  centroids = {label: np.mean(v, axis=0) for label, v in velocities.items()}
  for label, samples in velocities.items():
    for velocity in samples:
      nearest = min(centroids, key=lambda c: np.linalg.norm(centroids[c] - velocity))
      assert nearest == label
  headings = {label: math.atan2(c[1], c[0]) % (2 * math.pi) for label, c in centroids.items()}
  assert len({round(h, 1) for h in headings.values()}) == num_classes


def test_command_line_writes_loose_videos_equal_to_the_zips_members(tmp_path):
  out = tmp_path / "try"
  synthetic.main(
      [str(out), "--classes=2", "--videos_per_class=1", "--duration_s=0.5", "--loose_videos"]
  )
  with zipfile.ZipFile(out / synthetic.VIDEO_ZIP_NAME) as archive:
    members = {name.rsplit("/", 1)[1]: archive.read(name) for name in archive.namelist()}
  assert len(members) == 2
  for name, data in members.items():
    assert (out / name).read_bytes() == data


def test_the_full_size_plan_has_ucf101s_structure_and_split_rule():
  names = synthetic.class_names(101, include_handstand_pushups=True)
  videos = synthetic.plan_ucf101_videos(names, 13_320)
  lists = ucf101.parse_split_zip(synthetic.splits_zip_bytes(names, videos))
  assert len(lists.videos) == 13_320 and len(lists.class_names) == 101
  groups = {(v.label, v.group) for v in lists.videos}
  assert len(groups) == 101 * 25
  for split, first_test_group in ((1, 1), (2, 8), (3, 15)):
    test_groups = {v.group for v in lists.videos if v.roles[split - 1] == ucf101.TEST}
    assert test_groups == set(range(first_test_group, first_test_group + 7))
    train, test = lists.split_counts()[split]
    official_train, official_test = ucf101.EXPECTED_SPLIT_COUNTS[split]
    assert train + test == 13_320 and abs(test - official_test) < 0.05 * official_test
