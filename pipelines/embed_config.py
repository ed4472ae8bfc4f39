"""The embedding job's settings: `EmbedJobConfig` and the command line that fills it.

Stage: before any work. `parse_args` turns flags into a config whose dataset
defaults are resolved (`--dataset`'s locations and protocol where no flag
gave them) and whose local paths are absolute, so that the run record says
where everything is wherever it is read from; `settings_problems` names
what no run could use.
"""

import dataclasses
from collections.abc import Sequence

from mmv_core import checkpoints
from mmv_core import datasets
from mmv_core import video
from mmv_core.embedder_config import CACHE_DIR_ENV, PRECISIONS, EmbedderConfig
from mmv_core.models.names import BACKBONES, VID_REPR, VIDEO_OUTPUTS
from pipelines import dataset_flags
from pipelines.common import absolute_location, add_required_flag, add_verbose_flag
from pipelines.common import check_beam_flags, job_parser


@dataclasses.dataclass(frozen=True)
class EmbedJobConfig:
  """Every setting of the embedding job (the flags of `parse_args`)."""

  checkpoint_path: str
  work_dir: str
  output_dir: str
  dataset: str = datasets.UCF101.name
  # The location flags of every dataset (`dataset_flags.LOCATION_FLAGS`); a
  # dataset's own are filled with its defaults, the others stay None.
  video_zip: str | None = None
  splits_zip: str | None = None
  splits_dir: str | None = None
  csv_dir: str | None = None
  video_root: str | None = None
  backbone: str | None = None
  num_frames: int = video.DEFAULT_NUM_FRAMES
  stride: int = video.DEFAULT_STRIDE
  min_resize: int = video.DEFAULT_MIN_RESIZE
  crop_size: int = video.DEFAULT_CROP_SIZE
  num_train_clips: int = video.DEFAULT_NUM_TRAIN_CLIPS
  num_test_windows: int = video.DEFAULT_NUM_TEST_WINDOWS
  exact_train_clips: bool = False
  batch_size: int = EmbedderConfig.batch_size
  precision: str = EmbedderConfig.precision
  joint_embeddings: bool = False
  seed: int = 0
  classes: tuple[str, ...] = ()
  max_videos: int | None = None
  embed_accelerator: str | None = None
  embed_min_ram: str | None = None
  model_copies: int | None = None
  prefetch_videos: int = 1
  jax_cache_dir: str | None = None
  overwrite: bool = False
  resume: bool = False
  max_failed_share: float = 0.1
  recipe: str | None = None

  @property
  def outputs(self) -> tuple[str, ...]:
    return VIDEO_OUTPUTS if self.joint_embeddings else (VID_REPR,)

  @property
  def resolved_backbone(self) -> str:
    return self.backbone or checkpoints.infer_backbone(self.checkpoint_path)

  @property
  def dataset_spec(self) -> datasets.DatasetSpec:
    """The --dataset, re-encoded with --recipe if given."""
    spec = datasets.get(self.dataset)
    return dataclasses.replace(spec, recipe=self.recipe) if self.recipe else spec

  @property
  def splits_location(self) -> str | None:
    return getattr(self, self.dataset_spec.splits_flag)

  @property
  def videos_location(self) -> str | None:
    return getattr(self, self.dataset_spec.videos_flag)


# The settings that decide the embeddings: a resumed run must repeat them.
RESUME_SETTINGS = (
    "dataset",
    "recipe",
    "video_zip",
    "splits_zip",
    "splits_dir",
    "csv_dir",
    "video_root",
    "backbone",
    "num_frames",
    "stride",
    "min_resize",
    "crop_size",
    "num_train_clips",
    "num_test_windows",
    "exact_train_clips",
    "precision",
    "joint_embeddings",
    "seed",
    "classes",
    "max_videos",
)


PROG = "python -m pipelines.embed"
LOG_PREFIX = "[embed]"  # Starts the lines the job prints.
# Sampling flags whose defaults are the dataset's (`datasets.ProtocolDefaults`).
_PROTOCOL_FLAGS = (
    ("num_frames", "frames per clip (T)"),
    ("stride", "step between a clip's frames"),
    ("min_resize", "frames are resized so their smaller side is this"),
    ("crop_size", "side of the square crop (at most --min_resize)"),
    ("num_train_clips", "random training clips per video (0: none)"),
    ("num_test_windows", "evenly spaced test windows per video (0: none)"),
)


def parse_args(argv: Sequence[str] | None) -> tuple[EmbedJobConfig, list[str]]:
  """Flags -> (job config, remaining Beam pipeline options)."""
  defaults = EmbedJobConfig(checkpoint_path="", work_dir="", output_dir="")
  p = job_parser(
      PROG,
      "The main job: a dataset's videos in, MMV clip embeddings out as TFRecords.",
      "Other flags are Beam pipeline options (e.g. --runner, --direct_num_workers, "
      "Dataflow's --project, --region, --temp_location).",
  )
  add_required_flag(
      p,
      "--checkpoint_path",
      "released MMV checkpoint (.pkl) or converted .npz; local, gs:// or https://",
  )
  add_required_flag(p, "--work_dir", "video cache (local or gs://), reused across runs")
  add_required_flag(p, "--output_dir", "embeddings, failures and run.json; one run per directory")
  dataset_flags.add_dataset_flags(p)
  p.add_argument(
      "--backbone",
      default=None,
      choices=BACKBONES,
      help="default: inferred from the checkpoint's file name",
  )
  for name, text in _PROTOCOL_FLAGS:
    p.add_argument(
        f"--{name}", type=int, default=None, help=f"{text}; default: the dataset's protocol"
    )
  for name, text in (
      ("batch_size", "clips per forward pass (a multiple of the devices)"),
      ("seed", "seed of the training clips' draws"),
  ):
    p.add_argument(f"--{name}", type=int, default=getattr(defaults, name), help=text)
  p.add_argument(
      "--exact_train_clips",
      action="store_true",
      help="flip training clips before resizing them, bit-exactly as the protocol; "
      "by default they are flipped after it (each frame resized once), which "
      "draws the same clips but leaves flipped ones within 1 grey level of the "
      "protocol's (bilinear resizing is not exactly flip-equivariant)",
  )
  p.add_argument(
      "--precision",
      choices=PRECISIONS,
      default=defaults.precision,
      help="float32 is the protocol's arithmetic on every device; tensorfloat32 (NVIDIA "
      "GPUs) and bfloat16 (accelerators) trade exactness for speed (docs/models.md)",
  )
  p.add_argument(
      "--joint_embeddings",
      action="store_true",
      help="also write the video-audio and video-text joint-space embeddings",
  )
  p.add_argument("--classes", default="", help="comma-separated class names, for trials")
  p.add_argument("--max_videos", type=int, default=None, help="limit the run, for trials")
  p.add_argument(
      "--embed_accelerator",
      default=None,
      help="Dataflow resource hint for the embedding step only, e.g. "
      '"type:nvidia-l4;count:1;install-nvidia-driver"',
  )
  p.add_argument("--embed_min_ram", default=None, help='resource hint, e.g. "16GB"')
  p.add_argument(
      "--model_copies",
      type=int,
      default=None,
      help="models per worker VM shared across its SDK processes; each batch is "
      "then pickled to the model's process (bench/README.md: GPU workers)",
  )
  p.add_argument(
      "--prefetch_videos",
      type=int,
      default=defaults.prefetch_videos,
      help="videos whose clips are cut ahead, each in its own thread, while the device "
      "embeds (0: one after the other); each holds (train clips + test windows) x T x "
      "crop x crop x 3 bytes. On CPUs the model already keeps every core busy; give a "
      "GPU or TPU host one per core",
  )
  p.add_argument(
      "--jax_cache_dir",
      default=None,
      help=f"compiled programs kept across runs; default ${CACHE_DIR_ENV}, "
      "else $XDG_CACHE_HOME/mmv/jax, else ~/.cache/mmv/jax",
  )
  p.add_argument(
      "--overwrite",
      action="store_true",
      help="delete what --output_dir holds and start again; without it or "
      "--resume a used --output_dir is refused",
  )
  p.add_argument(
      "--resume",
      action="store_true",
      help="complete the run that owns --output_dir (same settings): its written "
      "videos are kept and skipped, the others (failed ones too) embedded",
  )
  p.add_argument(
      "--max_failed_share",
      type=float,
      default=defaults.max_failed_share,
      help="the run ends with status 1 if more than this share of its videos fail",
  )
  add_verbose_flag(p, "Beam's, JAX's and the workers' INFO logs")
  args, beam_args = p.parse_known_args(argv)
  check_beam_flags(beam_args, PROG)
  values = vars(args)
  values.pop("verbose")
  values["classes"] = tuple(c for c in values["classes"].split(",") if c)
  for name in PATH_FLAGS:
    values[name] = absolute_location(values[name])
  return resolve_dataset_defaults(EmbedJobConfig(**values)), beam_args


# Flags naming files or folders, made absolute when local (`absolute_location`).
PATH_FLAGS = (
    "checkpoint_path",
    "work_dir",
    "output_dir",
    "jax_cache_dir",
    *dataset_flags.LOCATION_FLAGS,
)


def resolve_dataset_defaults(config: EmbedJobConfig) -> EmbedJobConfig:
  """`config` with its dataset's default locations and protocol where flags gave none.

  Raises:
    UsageError: an unknown dataset, or a location flag of another dataset.
  """
  spec, splits_location, videos_location = dataset_flags.resolve_dataset(
      config.dataset,
      {flag: getattr(config, flag) for flag in dataset_flags.LOCATION_FLAGS},
      config.recipe,
  )
  protocol = {
      name: getattr(spec.protocol, name)
      for name, _ in _PROTOCOL_FLAGS
      if getattr(config, name) is None
  }
  return dataclasses.replace(
      config,
      **protocol,
      recipe=spec.recipe,
      **{spec.splits_flag: splits_location, spec.videos_flag: videos_location},
  )


def settings_problems(config: EmbedJobConfig) -> list[str]:
  """What makes the settings unusable, before any work; empty when they are fine."""
  problems = [
      f"--{name} must be positive, got {getattr(config, name)}"
      for name in ("num_frames", "stride", "min_resize", "crop_size", "batch_size")
      if getattr(config, name) < 1
  ]
  problems += [
      f"--{name} must be 0 or more, got {getattr(config, name)}"
      for name in ("num_train_clips", "num_test_windows", "prefetch_videos")
      if getattr(config, name) < 0
  ]
  if config.num_train_clips == 0 and config.num_test_windows == 0:
    problems.append("--num_train_clips and --num_test_windows are both 0: nothing to embed")
  if config.crop_size > config.min_resize > 0:
    problems.append(
        f"--crop_size {config.crop_size} is larger than --min_resize "
        f"{config.min_resize}: training crops would not fit in the frames"
    )
  if config.max_videos is not None and config.max_videos < 1:
    problems.append(f"--max_videos must be positive, got {config.max_videos}")
  if config.model_copies is not None and config.model_copies < 1:
    problems.append(f"--model_copies must be positive, got {config.model_copies}")
  if config.resume and config.overwrite:
    problems.append("--resume keeps what --output_dir holds and --overwrite deletes it: choose one")
  if not 0 <= config.max_failed_share <= 1:
    problems.append(f"--max_failed_share must be in [0, 1], got {config.max_failed_share}")
  return problems
