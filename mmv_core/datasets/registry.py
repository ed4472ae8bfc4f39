"""What a dataset is: one `DatasetSpec` per dataset, in `DATASETS`.

Stage: configuration of every job. A dataset names how its videos are listed
with labels and splits (and which command-line flags locate those files), how
its videos are fetched (members of one ZIP, or whole files), the encoding
recipe that turns them into frames, and the sampling and classifier defaults
of its published protocol. Jobs take `--dataset` and read the rest from its
spec instead of branching per dataset. docs/datasets.md describes the three.
"""

import dataclasses
import posixpath
from collections.abc import Callable

from mmv_core.datasets import csv_dataset
from mmv_core.datasets import dataset_listing
from mmv_core.video import encoding_recipes
from mmv_core.datasets import hmdb51
from mmv_core.datasets import ucf101
from mmv_core.models.names import S3D, TSM_RESNET_X1, TSM_RESNET_X2

# How a dataset's `ListedVideo.location` is fetched.
FETCH_ZIP_MEMBER = "zip_member"  # a member of the ZIP the videos flag names
FETCH_FILE = "file"  # a whole file: local path, gs:// or http(s):// URL

# C of the UCF101 protocol (`LinearSVC(C=0.001)`, docs/protocol.md), equal to
# `mmv_core.evaluation.linear_eval.DEFAULT_SVM_C`; not imported from there so that the
# linear evaluation can import this module.
UCF101_SVM_C = 0.001


class UnknownDatasetError(ValueError):
  """No dataset has the asked-for name."""


class MissingLocationError(ValueError):
  """A dataset's listing needs a location the command line did not give."""


@dataclasses.dataclass(frozen=True)
class ProtocolDefaults:
  """Sampling and classifier settings of a dataset's published protocol.

  Attributes:
    num_frames: frames per clip.
    stride: step between a clip's frames, in frames of the re-encoded video.
    min_resize: smaller side after resizing, in pixels.
    crop_size: side of the square crop, in pixels.
    num_train_clips: random training clips per training video.
    num_test_windows: evenly spaced windows per test video (scores averaged).
    svm_c: `(backbone, C)` of the linear SVM, for every backbone.
  """

  num_frames: int
  stride: int
  min_resize: int
  crop_size: int
  num_train_clips: int
  num_test_windows: int
  svm_c: tuple[tuple[str, float], ...]

  def svm_c_for(self, backbone: str) -> float:
    """C for `backbone`; ValueError names the known backbones."""
    by_backbone = dict(self.svm_c)
    if backbone not in by_backbone:
      raise ValueError(f"no C for backbone {backbone!r}; known: {', '.join(by_backbone)}")
    return by_backbone[backbone]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset: listing, fetching, encoding and protocol defaults.

  Attributes:
    name: the `--dataset` value.
    description: one line for help texts.
    lister: `(splits location, videos location or None) -> DatasetListing`.
    splits_flag: the flag (without dashes) locating the split definitions.
    videos_flag: the flag locating the videos.
    default_splits: used when `splits_flag` is not given; None: required.
    default_videos: used when `videos_flag` is not given.
    videos_required: whether the listing needs a videos location (CSVs of
      absolute paths do not).
    fetch: FETCH_ZIP_MEMBER or FETCH_FILE, how `ListedVideo.location` is read.
    recipe: name of the encoding recipe (`encoding_recipes.RECIPES`).
    protocol: sampling and classifier defaults.
    expected_split_counts: `{split: (train, test)}` of the official
      dataset, to warn about incomplete copies; None where there is none.
  """

  name: str
  description: str
  lister: Callable[[str, str | None], dataset_listing.DatasetListing]
  splits_flag: str
  videos_flag: str
  default_splits: str | None
  default_videos: str | None
  videos_required: bool
  fetch: str
  recipe: str
  protocol: ProtocolDefaults
  expected_split_counts: dict[int, tuple[int, int]] | None = dataclasses.field(
      default=None, hash=False
  )

  @property
  def encoding_recipe(self) -> encoding_recipes.EncodingRecipe:
    return encoding_recipes.get(self.recipe)

  def list_videos(
      self, splits_location: str | None = None, videos_location: str | None = None
  ) -> dataset_listing.DatasetListing:
    """Lists the dataset from the given locations or the defaults.

    Raises:
      MissingLocationError: naming the flag to pass.
      dataset_listing.ListingError, ucf101.SplitListError: malformed files.
    """
    splits_location = splits_location or self.default_splits
    videos_location = videos_location or self.default_videos
    if not splits_location:
      raise MissingLocationError(f"--dataset={self.name} needs --{self.splits_flag}")
    if self.videos_required and not videos_location:
      raise MissingLocationError(f"--dataset={self.name} needs --{self.videos_flag}")
    return self.lister(splits_location, videos_location)


def listing_from_ucf101(lists: ucf101.SplitLists) -> dataset_listing.DatasetListing:
  """UCF101's split lists as a listing.

  Ids stay the ZIP's file stems (already safe), locations are the members'
  names in the video ZIP, and groups are the zero-padded `gGG` numbers, whose
  string order is their numeric order.
  """
  videos = tuple(
      dataset_listing.ListedVideo(
          video_id=v.video_id,
          name=posixpath.basename(v.member_name),
          location=v.member_name,
          label=v.label,
          label_name=v.label_name,
          roles=tuple((split, role) for split, role in zip(ucf101.SPLITS, v.roles) if role),
          group=f"{v.group:02d}",
      )
      for v in lists.videos
  )
  return dataset_listing.DatasetListing(
      class_names=lists.class_names, splits=ucf101.SPLITS, videos=videos
  )


def _list_ucf101(splits_zip: str, _video_zip: str | None) -> dataset_listing.DatasetListing:
  return listing_from_ucf101(ucf101.load_split_lists(splits_zip))


# `mmv_core.video`'s defaults (tests/test_datasets.py pins them equal), spelled
# out because that module brings in numba and scipy, which the evaluation
# job's quick --help does without.
UCF101_PROTOCOL = ProtocolDefaults(
    num_frames=32,
    stride=2,
    min_resize=224,
    crop_size=224,
    num_train_clips=10,
    num_test_windows=10,
    svm_c=((S3D, UCF101_SVM_C), (TSM_RESNET_X1, UCF101_SVM_C), (TSM_RESNET_X2, UCF101_SVM_C)),
)

# dmvr's HMDB51 example, published with the paper's HMDB51 numbers.
HMDB51_PROTOCOL = ProtocolDefaults(
    num_frames=32,
    stride=1,
    min_resize=224,
    crop_size=200,
    num_train_clips=10,
    num_test_windows=10,
    svm_c=((S3D, 3e-4), (TSM_RESNET_X1, 1e-4), (TSM_RESNET_X2, 3e-4)),
)

UCF101 = DatasetSpec(
    name="ucf101",
    description="UCF101 (101 classes, 3 splits) from its pinned archives",
    lister=_list_ucf101,
    splits_flag="splits_zip",
    videos_flag="video_zip",
    default_splits=ucf101.SPLITS_ZIP_URL,
    default_videos=ucf101.VIDEO_ZIP_URL,
    videos_required=True,
    fetch=FETCH_ZIP_MEMBER,
    recipe=encoding_recipes.UCF101.name,
    protocol=UCF101_PROTOCOL,
    expected_split_counts=ucf101.EXPECTED_SPLIT_COUNTS,
)

HMDB51 = DatasetSpec(
    name="hmdb51",
    description="HMDB51 (51 classes, 3 splits): extracted <class>/<video>.avi tree",
    lister=hmdb51.list_videos,
    splits_flag="splits_dir",
    videos_flag="video_root",
    default_splits=None,
    default_videos=None,
    videos_required=True,
    fetch=FETCH_FILE,
    recipe=encoding_recipes.HMDB51.name,
    protocol=HMDB51_PROTOCOL,
    expected_split_counts=hmdb51.EXPECTED_SPLIT_COUNTS,
)

CSV = DatasetSpec(
    name="csv",
    description="your own videos, listed in train_<N>.csv / test_<N>.csv",
    lister=csv_dataset.list_videos,
    splits_flag="csv_dir",
    videos_flag="video_root",
    default_splits=None,
    default_videos=None,
    videos_required=False,
    fetch=FETCH_FILE,
    recipe=encoding_recipes.UCF101.name,
    protocol=UCF101_PROTOCOL,
)

DATASETS = {spec.name: spec for spec in (UCF101, HMDB51, CSV)}


def get(name: str) -> DatasetSpec:
  """The dataset called `name`; UnknownDatasetError lists the known names."""
  try:
    return DATASETS[name]
  except KeyError:
    raise UnknownDatasetError(
        f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}"
    ) from None
