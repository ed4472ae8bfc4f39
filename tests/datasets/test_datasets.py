"""The dataset registry, its protocol defaults, UCF101 as a listing, shared listing rules."""

import pathlib
import pickle
import subprocess
import sys
import urllib.parse

import pytest

from mmv_core.datasets import dataset_listing
from mmv_core import datasets
from mmv_core.video import encoding_recipes
from mmv_core.evaluation import linear_eval
from mmv_core.datasets import synthetic
from mmv_core.datasets import synthetic_hmdb51
from mmv_core.datasets import ucf101
from mmv_core import video
from mmv_core.models.names import BACKBONES

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_registry_names_every_dataset_and_rejects_unknown_names():
  assert sorted(datasets.DATASETS) == ["csv", "hmdb51", "ucf101"]
  assert all(datasets.get(name).name == name for name in datasets.DATASETS)
  with pytest.raises(datasets.UnknownDatasetError, match="known: csv, hmdb51, ucf101"):
    datasets.get("kinetics")


def test_importing_the_registry_loads_no_model_or_classifier_library():
  # Ingestion workers import it; JAX, TensorFlow and scikit-learn cost them seconds.
  script = (
      "import sys, mmv_core.datasets; "
      "print(sorted({m.split('.')[0] for m in sys.modules} "
      "& {'jax', 'tensorflow', 'sklearn'}))"
  )
  result = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, check=True
  )
  assert result.stdout.strip() == "[]"


def test_each_dataset_names_a_recipe_and_a_c_for_every_backbone():
  for spec in datasets.DATASETS.values():
    assert spec.encoding_recipe is encoding_recipes.get(spec.recipe)
    assert [backbone for backbone, _ in spec.protocol.svm_c] == list(BACKBONES)
  with pytest.raises(ValueError, match="no C for backbone 'vit'"):
    datasets.UCF101.protocol.svm_c_for("vit")


def test_ucf101_defaults_are_todays():
  protocol = datasets.UCF101.protocol
  assert (
      protocol.num_frames,
      protocol.stride,
      protocol.min_resize,
      protocol.crop_size,
      protocol.num_train_clips,
      protocol.num_test_windows,
  ) == (
      video.DEFAULT_NUM_FRAMES,
      video.DEFAULT_STRIDE,
      video.DEFAULT_MIN_RESIZE,
      video.DEFAULT_CROP_SIZE,
      video.DEFAULT_NUM_TRAIN_CLIPS,
      video.DEFAULT_NUM_TEST_WINDOWS,
  )
  assert {c for _, c in protocol.svm_c} == {linear_eval.DEFAULT_SVM_C}
  assert datasets.UCF101.recipe == "ucf101"
  assert (datasets.UCF101.default_splits, datasets.UCF101.default_videos) == (
      ucf101.SPLITS_ZIP_URL,
      ucf101.VIDEO_ZIP_URL,
  )
  assert datasets.UCF101.fetch == datasets.FETCH_ZIP_MEMBER


def test_hmdb51_defaults_are_dmvrs_published_recipe():
  protocol = datasets.HMDB51.protocol
  assert (
      protocol.num_frames,
      protocol.stride,
      protocol.min_resize,
      protocol.crop_size,
      protocol.num_train_clips,
      protocol.num_test_windows,
  ) == (32, 1, 224, 200, 10, 10)
  assert [protocol.svm_c_for(b) for b in BACKBONES] == [3e-4, 1e-4, 3e-4]
  assert datasets.HMDB51.recipe == "hmdb51"
  assert datasets.HMDB51.fetch == datasets.FETCH_FILE


def test_csv_defaults_to_the_ucf101_recipe_and_protocol():
  assert datasets.CSV.recipe == "ucf101"
  assert datasets.CSV.protocol == datasets.UCF101.protocol


def test_ucf101_maps_onto_the_common_record(tmp_path):
  names = synthetic.class_names(3, include_handstand_pushups=True)
  planned = synthetic.plan_videos(names, videos_per_class=4, clips_per_group=1)
  splits_zip = tmp_path / "splits.zip"
  splits_zip.write_bytes(synthetic.splits_zip_bytes(names, planned))

  listing = datasets.UCF101.list_videos(str(splits_zip))

  lists = ucf101.load_split_lists(str(splits_zip))
  assert listing.class_names == lists.class_names
  assert listing.splits == ucf101.SPLITS
  assert [v.video_id for v in listing.videos] == [v.video_id for v in lists.videos]
  for listed, record in zip(listing.videos, lists.videos):
    assert (listed.label, listed.label_name) == (record.label, record.label_name)
    assert listed.location == record.member_name
    assert listed.name == f"{record.video_id}.avi"
    assert [listed.role(s) for s in ucf101.SPLITS] == list(record.roles)
    assert listed.group == f"{record.group:02d}"
  assert listing.split_counts() == lists.split_counts()


def test_hmdb51_and_csv_list_through_their_specs(tmp_path):
  splits_dir = str(tmp_path / "splits")
  names = synthetic_hmdb51.class_names(3)
  synthetic_hmdb51.write_split_files(splits_dir, names, synthetic_hmdb51.plan_videos(names, 3))
  csv_dir = tmp_path / "csv"
  csv_dir.mkdir()
  (csv_dir / "train_1.csv").write_text("video_path,start,end,label\n/v/a.mp4,,,x\n")
  (csv_dir / "test_1.csv").write_text("video_path,start,end,label\n/v/b.mp4,,,y\n")

  assert len(datasets.HMDB51.list_videos(splits_dir, "/videos").videos) == 9
  assert len(datasets.CSV.list_videos(str(csv_dir)).videos) == 2


def test_missing_locations_name_the_flag_to_pass(tmp_path):
  with pytest.raises(datasets.MissingLocationError, match="--dataset=hmdb51 needs --splits_dir"):
    datasets.HMDB51.list_videos(None, "/videos")
  with pytest.raises(datasets.MissingLocationError, match="--dataset=hmdb51 needs --video_root"):
    datasets.HMDB51.list_videos(str(tmp_path))
  with pytest.raises(datasets.MissingLocationError, match="--dataset=csv needs --csv_dir"):
    datasets.CSV.list_videos()


def test_safe_video_ids_are_reversible_and_distinct():
  names = ["a b", "a_b", "a%20b", "Amélie's (1) [HD] #2+3; R&R!", "x/y", "x%2Fy"]

  ids = [dataset_listing.safe_video_id(name) for name in names]

  assert len(set(ids)) == len(names)
  assert [urllib.parse.unquote(i) for i in ids] == names
  safe = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~%")
  assert all(set(i) <= safe for i in ids)


@pytest.mark.parametrize(
    "root, relative, expected",
    [
        ("/data/", "cls/a b.avi", "/data/cls/a b.avi"),
        ("gs://bucket/hmdb", "cls/#1.avi", "gs://bucket/hmdb/cls/#1.avi"),
        ("https://host/v", "cls/a b#1?.avi", "https://host/v/cls/a%20b%231%3F.avi"),
    ],
)
def test_join_location(root, relative, expected):
  assert dataset_listing.join_location(root, relative) == expected


def test_listing_rejects_two_videos_with_one_id():
  def listed(name):
    return dataset_listing.ListedVideo(
        video_id="a",
        name=name,
        location=name,
        label=0,
        label_name="x",
        roles=((1, "train"),),
        group="a",
    )

  with pytest.raises(dataset_listing.ListingError, match=r"'a' by \['a.avi', 'a'\]"):
    dataset_listing.make_listing(["x"], [listed("a.avi"), listed("a")])


def test_records_and_specs_survive_pickling_for_beam():
  video = dataset_listing.ListedVideo(
      video_id="a",
      name="a",
      location="/v/a",
      label=0,
      label_name="x",
      roles=((1, "train"),),
      group="a",
      start_s=1.5,
      end_s=None,
  )

  assert pickle.loads(pickle.dumps(video)) == video
  assert pickle.loads(pickle.dumps(datasets.HMDB51)) == datasets.HMDB51


def _small_ucf101_listing() -> dataset_listing.DatasetListing:
  """3 classes x 4 videos, one group each."""
  names = synthetic.class_names(3, include_handstand_pushups=True)
  planned = synthetic.plan_videos(names, videos_per_class=4, clips_per_group=1)
  return datasets.listing_from_ucf101(
      ucf101.parse_split_zip(synthetic.splits_zip_bytes(names, planned))
  )


def test_select_takes_videos_round_robin_over_classes():
  listing = _small_ucf101_listing()

  chosen = listing.select(max_videos=4)
  assert len(chosen) == 4
  assert {v.label_name for v in chosen} == set(listing.class_names)
  assert [v.video_id for v in chosen] == sorted(v.video_id for v in chosen)

  only = listing.select(classes=[listing.class_names[1]])
  assert {v.label_name for v in only} == {listing.class_names[1]} and len(only) == 4

  with pytest.raises(dataset_listing.ListingError, match="NoSuchClass"):
    listing.select(classes=["NoSuchClass"])


@pytest.mark.parametrize("max_videos", [0, -1])
def test_select_refuses_a_max_videos_below_one(max_videos):
  with pytest.raises(ValueError, match=f"max_videos must be at least 1, got {max_videos}"):
    _small_ucf101_listing().select(max_videos=max_videos)
