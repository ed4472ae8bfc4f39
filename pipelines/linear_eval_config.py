"""The evaluation job's settings: `LinearEvalConfig` and its command line (`parse_args`)."""

import argparse
import dataclasses
import math
from collections.abc import Sequence


from mmv_core import datasets
from mmv_core.evaluation import linear_eval
from pipelines import common

PROG = "python -m pipelines.linear_eval"
# The flags that locate a dataset's split definitions, one or more datasets each.
_SPLITS_FLAGS = tuple(sorted({spec.splits_flag for spec in datasets.DATASETS.values()}))


@dataclasses.dataclass(frozen=True)
class LinearEvalConfig:
  """Everything the job's tasks need; built once from the flags."""

  embeddings_dir: str
  output_dir: str
  dataset: str | None  # None: the one the embedding job used (its run.json).
  # The split definitions (`DatasetSpec.splits_flag`); None: run.json's.
  splits_location: str | None
  splits: tuple[int, ...] | None  # None: every split of the dataset.
  svm_cs: tuple[float, ...] | None  # None: the protocol's C for the backbone.
  svm_settings: linear_eval.SvmSettings
  allow_missing: bool
  overwrite: bool = False
  protocols: tuple[str, ...] = (linear_eval.LINEAR,)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _comma_list(kind):
  def parse(text: str):
    try:
      values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError as e:
      raise argparse.ArgumentTypeError(f"{text!r}: {e}") from e
    if not values:
      raise argparse.ArgumentTypeError("empty list")
    return values

  return parse


def _protocol(text: str) -> str:
  if text not in linear_eval.PROTOCOLS:
    raise ValueError(f"no protocol {text!r}; there are {', '.join(linear_eval.PROTOCOLS)}")
  return text


def _dual(text: str) -> bool | str:
  choices = {"true": True, "false": False, "auto": "auto"}
  if text.lower() not in choices:
    raise argparse.ArgumentTypeError(f"{text!r}: expected true, false or auto")
  return choices[text.lower()]


def _positive(value: float) -> bool:
  return math.isfinite(value) and value > 0


def parse_args(argv: Sequence[str] | None) -> tuple[LinearEvalConfig, list[str]]:
  """Flags -> (the job's settings, the remaining flags: Beam's pipeline options).

  Raises:
    common.UsageError: a flag's value is out of range.
  """
  defaults = linear_eval.DEFAULT_SVM_SETTINGS
  parser = common.job_parser(
      PROG,
      __doc__.split("\n", 1)[0],
      "Other flags are Beam's pipeline options (e.g. --runner); by default the "
      "job runs in this process on Beam's local runner.",
  )
  common.add_required_flag(
      parser, "--embeddings_dir", "the embedding job's --output_dir (local or gs://)"
  )
  common.add_required_flag(
      parser,
      "--output_dir",
      "where metrics.json, report.md, per_class_accuracy.csv, the confusion PNGs and "
      "classifiers/ go; one evaluation per directory",
  )
  parser.add_argument(
      "--dataset",
      default=None,
      help="the embeddings' dataset, checked against the one their run.json records (UCF101 "
      "where it records none); None: that one",
  )
  for flag in _SPLITS_FLAGS:
    parser.add_argument(
        f"--{flag}",
        default=None,
        help="the split definitions (local, gs:// or https://) for --dataset="
        + "/".join(s.name for s in datasets.DATASETS.values() if s.splits_flag == flag)
        + "; None: those the embedding job recorded in its run.json",
    )
  parser.add_argument(
      "--splits",
      type=_comma_list(int),
      default=None,
      help="comma-separated splits to evaluate; None: every split of the dataset",
  )
  parser.add_argument(
      "--protocols",
      type=_comma_list(_protocol),
      default=(linear_eval.LINEAR,),
      help="comma-separated, among "
      + ", ".join(linear_eval.PROTOCOLS)
      + " (docs/protocol.md): the linear probe; kNN classification; video retrieval "
      "(recall at k); few-shot linear probes",
  )
  parser.add_argument(
      "--svm_c",
      type=_comma_list(float),
      default=None,
      help="C of the SVM; a comma-separated list runs a sweep, choosing C by "
      "top-1 on held-out training groups; None: the dataset's protocol C for "
      f"the backbone ({linear_eval.DEFAULT_SVM_C:g} for UCF101)",
  )
  parser.add_argument(
      "--solver",
      choices=linear_eval.SOLVERS,
      default=defaults.solver,
      help="newton: every class at once by matrix products; liblinear: "
      "scikit-learn's LinearSVC, one class at a time, as the original "
      "evaluation ran it. Same objective.",
  )
  parser.add_argument(
      "--svm_dual",
      type=_dual,
      default=str(defaults.dual).lower(),
      help="liblinear only: LinearSVC's dual (true, false or auto)",
  )
  parser.add_argument(
      "--svm_tol",
      type=float,
      default=None,
      help="newton: stop when each class's gradient norm falls to this "
      "fraction of its norm at zero; liblinear: LinearSVC's tol. None: "
      f"{defaults.tol:g} for newton, {linear_eval.ORIGINAL_SVM_SETTINGS.tol:g} "
      "(the original's) for liblinear",
  )
  parser.add_argument(
      "--svm_max_iter",
      type=int,
      default=defaults.max_iter,
      help="newton: Newton iterations at most (a split that needs more "
      "is an error); liblinear: LinearSVC's max_iter",
  )
  parser.add_argument(
      "--allow_missing",
      action="store_true",
      help="score splits whose videos lack clips; the report lists what was missing",
  )
  parser.add_argument(
      "--overwrite",
      action="store_true",
      help="delete --output_dir and everything in it, then evaluate into it",
  )
  common.add_verbose_flag(parser, "Beam's INFO logs and each split's result as it comes")
  args, beam_args = parser.parse_known_args(argv)
  common.check_beam_flags(beam_args, PROG)

  given_splits_flags = [flag for flag in _SPLITS_FLAGS if getattr(args, flag)]
  if len(given_splits_flags) > 1:
    raise common.UsageError(f"give at most one of {', '.join('--' + f for f in _SPLITS_FLAGS)}")
  bad_cs = [c for c in args.svm_c or () if not _positive(c)]
  if bad_cs:
    raise common.UsageError(
        f"--svm_c: C must be a positive number, got {', '.join(f'{c:g}' for c in bad_cs)}"
    )
  if args.svm_tol is not None and not _positive(args.svm_tol):
    raise common.UsageError(f"--svm_tol must be a positive number, got {args.svm_tol:g}")
  if args.svm_max_iter < 1:
    raise common.UsageError(f"--svm_max_iter must be at least 1, got {args.svm_max_iter}")
  default_tol = (
      linear_eval.ORIGINAL_SVM_SETTINGS.tol
      if args.solver == linear_eval.SOLVER_LIBLINEAR
      else defaults.tol
  )
  config = LinearEvalConfig(
      embeddings_dir=common.absolute_location(args.embeddings_dir),
      output_dir=common.absolute_location(args.output_dir),
      dataset=args.dataset,
      splits_location=(
          common.absolute_location(getattr(args, given_splits_flags[0]))
          if given_splits_flags
          else None
      ),
      splits=tuple(sorted(set(args.splits))) if args.splits else None,
      svm_cs=tuple(sorted(set(args.svm_c))) if args.svm_c else None,
      svm_settings=linear_eval.SvmSettings(
          solver=args.solver,
          dual=args.svm_dual,
          tol=args.svm_tol or default_tol,
          max_iter=args.svm_max_iter,
      ),
      allow_missing=args.allow_missing,
      overwrite=args.overwrite,
      protocols=tuple(p for p in linear_eval.PROTOCOLS if p in args.protocols),
  )
  return config, beam_args
