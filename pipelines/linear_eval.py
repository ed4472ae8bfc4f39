"""Beam job: UCF101 linear evaluation of an embedding job's clip embeddings.

  python -m pipelines.linear_eval --embeddings_dir=EMB --output_dir=OUT \
      [--splits=1,2,3] [--svm_c=0.001 | --svm_c=0.0001,0.0003,0.001] \
      [--solver=newton | --solver=liblinear] [--allow_missing]

The videos evaluated are those the embedding job was asked for: the split
lists it recorded in its run.json (or --splits_zip), limited to the
--classes and --max_videos it ran with. Before any work the job checks its
flags, that --output_dir holds no earlier metrics, run.json, the split lists
and, on a local runner, that every clip of those videos is there (one pass
over the clips' headers); each problem is one line on stderr and exit
status 2.

Each split is one task: it streams every shard keeping only its split's
clips, scores each C of a sweep on held-out training groups (all C values
fitted on one standardised copy, sharing its Gram matrix), and retrains with
the best C on all training clips. Locally the splits run one after another in
this process (the solver uses every core); on Dataflow they run in parallel
on the workers. Writes `metrics.json`,
`per_class_accuracy.csv`, `report.md` with confusion-matrix PNGs, and
`classifiers/split{N}.npz` (see `mmv_core.linear_eval` and `mmv_core.report`),
then prints the metrics table, with the accuracies that mean little marked
and the reason, the output paths and the wall time.
"""

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions, StandardOptions, TestOptions

from mmv_core import embedding_schema as schema
from mmv_core import linear_eval
from mmv_core import report
from mmv_core import sources
from mmv_core import ucf101
from pipelines import common

PROG = "python -m pipelines.linear_eval"
# Runners whose workers are elsewhere: there each split's task checks its
# clips, rather than every shard being read on the launching machine first.
_REMOTE_RUNNERS = ("DataflowRunner",)


class IncompleteInputError(common.UsageError, linear_eval.IncompleteSplitError):
  """Clips of the evaluated videos are missing and --allow_missing was not given.

  A usage error (one line, exit status 2) that callers of `main` can also
  catch as the library's `IncompleteSplitError`.
  """


@dataclasses.dataclass(frozen=True)
class LinearEvalConfig:
  """Everything the job's tasks need; built once from the flags."""
  embeddings_dir: str
  output_dir: str
  splits_zip: str | None  # None: the one the embedding job used (its run.json).
  splits: tuple[int, ...]
  svm_cs: tuple[float, ...]
  svm_settings: linear_eval.SvmSettings
  allow_missing: bool

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
  parser = argparse.ArgumentParser(
      prog=PROG, description=__doc__.split("\n", 1)[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
      epilog="Other flags are Beam's pipeline options (e.g. --runner); by default the "
      "job runs in this process on Beam's local runner.")
  # A required flag has no default for --help to show.
  parser.add_argument("--embeddings_dir", required=True, default=argparse.SUPPRESS,
                      help="the embedding job's --output_dir (local or gs://); required")
  parser.add_argument("--output_dir", required=True, default=argparse.SUPPRESS,
                      help="where metrics.json, report.md, per_class_accuracy.csv, the "
                      "confusion PNGs and classifiers/ go; it must not hold a metrics.json "
                      "already; required")
  parser.add_argument("--splits_zip", default=None,
                      help="split-list zip: local path, gs:// or https://; None: the one the "
                      "embedding job recorded in its run.json, else UCF101's official lists")
  parser.add_argument("--splits", type=_comma_list(int),
                      default=",".join(map(str, ucf101.SPLITS)),
                      help="comma-separated splits to evaluate")
  parser.add_argument("--svm_c", type=_comma_list(float), default=f"{linear_eval.DEFAULT_SVM_C:g}",
                      help="C of the SVM; a comma-separated list runs a sweep, choosing C by "
                      "top-1 on held-out training groups")
  parser.add_argument("--solver", choices=linear_eval.SOLVERS, default=defaults.solver,
                      help="newton: every class at once by matrix products; liblinear: "
                      "scikit-learn's LinearSVC, one class at a time, as the original "
                      "evaluation ran it. Same objective.")
  parser.add_argument("--svm_dual", type=_dual, default=str(defaults.dual).lower(),
                      help="liblinear only: LinearSVC's dual (true, false or auto)")
  parser.add_argument("--svm_tol", type=float, default=None,
                      help="newton: stop when each class's gradient norm falls to this "
                      "fraction of its norm at zero; liblinear: LinearSVC's tol. None: "
                      f"{defaults.tol:g} for newton, {linear_eval.ORIGINAL_SVM_SETTINGS.tol:g} "
                      "(the original's) for liblinear")
  parser.add_argument("--svm_max_iter", type=int, default=defaults.max_iter,
                      help="newton: Newton iterations at most (a split that needs more "
                      "is an error); liblinear: LinearSVC's max_iter")
  parser.add_argument("--allow_missing", action="store_true",
                      help="score splits whose videos lack clips; the report lists what "
                      "was missing")
  parser.add_argument("--verbose", action="store_true",
                      help="show Beam's INFO logs and each split's result as it comes")
  args, beam_args = parser.parse_known_args(argv)
  common.check_beam_flags(beam_args, PROG)

  unknown_splits = sorted(set(args.splits) - set(ucf101.SPLITS))
  if unknown_splits:
    raise common.UsageError(f"--splits: no split {unknown_splits}; UCF101 has splits "
                            f"{', '.join(map(str, ucf101.SPLITS))}")
  bad_cs = [c for c in args.svm_c if not _positive(c)]
  if bad_cs:
    raise common.UsageError(
        f"--svm_c: C must be a positive number, got {', '.join(f'{c:g}' for c in bad_cs)}")
  if args.svm_tol is not None and not _positive(args.svm_tol):
    raise common.UsageError(f"--svm_tol must be a positive number, got {args.svm_tol:g}")
  if args.svm_max_iter < 1:
    raise common.UsageError(f"--svm_max_iter must be at least 1, got {args.svm_max_iter}")
  default_tol = (linear_eval.ORIGINAL_SVM_SETTINGS.tol
                 if args.solver == linear_eval.SOLVER_LIBLINEAR else defaults.tol)
  config = LinearEvalConfig(
      embeddings_dir=args.embeddings_dir, output_dir=args.output_dir,
      splits_zip=args.splits_zip, splits=tuple(sorted(set(args.splits))),
      svm_cs=tuple(sorted(set(args.svm_c))),
      svm_settings=linear_eval.SvmSettings(
          solver=args.solver, dual=args.svm_dual, tol=args.svm_tol or default_tol,
          max_iter=args.svm_max_iter),
      allow_missing=args.allow_missing)
  return config, beam_args


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What the evaluation reads before the clips.

  Attributes:
    layouts: split -> its videos among those the embedding job was asked
      for, and their clip counts.
    classes: the classes of those videos, label -> name, in label order.
  """
  layouts: dict[int, linear_eval.SplitLayout]
  classes: dict[int, str]


def read_inputs(config: LinearEvalConfig) -> Inputs:
  """Reads run.json and the split lists; keeps the videos the embedding job was asked for.

  Raises:
    common.UsageError: run.json or the split lists cannot be read, or
      run.json names classes that the split lists lack.
  """
  try:
    run_config = schema.read_run_config(config.embeddings_dir)
  except schema.EmbeddingFormatError as e:
    raise common.UsageError(
        f"--embeddings_dir {config.embeddings_dir} is not an embedding job's output: {e}") from e
  settings = run_config.get(schema.SETTINGS, {})
  location = config.splits_zip or settings.get(schema.SPLITS_ZIP) or ucf101.SPLITS_ZIP_URL
  try:
    lists = ucf101.load_split_lists(location)
    videos = ucf101.select_videos(lists, settings.get(schema.CLASSES),
                                  settings.get(schema.MAX_VIDEOS))
  except (sources.SourceError, ucf101.SplitListError) as e:
    given_by = ("--splits_zip" if config.splits_zip
                else f"the split lists of {config.embeddings_dir}/{schema.RUN_CONFIG_FILE}")
    raise common.UsageError(f"{given_by}: {e}") from e
  asked_for = dataclasses.replace(lists, videos=tuple(videos))
  layouts = {s: linear_eval.SplitLayout.from_lists(
      asked_for, s, num_train_clips=run_config[schema.NUM_TRAIN_CLIPS],
      num_test_windows=run_config[schema.NUM_TEST_WINDOWS])
             for s in config.splits}
  labels = sorted({v.label for v in videos})
  return Inputs(layouts=layouts, classes={label: lists.class_names[label] for label in labels})


def check_output_dir(output_dir: str) -> None:
  """Refuses an output directory that holds an earlier evaluation's metrics."""
  metrics = f"{output_dir.rstrip('/')}/{report.METRICS_FILE}"
  if FileSystems.exists(metrics):
    raise common.UsageError(f"--output_dir {output_dir} already holds {report.METRICS_FILE}; "
                            "choose a new --output_dir or delete it")


def check_clips(config: LinearEvalConfig, inputs: Inputs) -> None:
  """Refuses, before any split is loaded, clips that cannot be evaluated.

  One pass over the clips' headers (`linear_eval.check_splits`).

  Raises:
    common.UsageError: a shard is unreadable, a label disagrees with the
      split lists, or a split has no training clip.
    IncompleteInputError: clips are missing, duplicated or beyond the
      expected count and --allow_missing was not given.
  """
  layouts = [inputs.layouts[s] for s in config.splits]
  try:
    checks = linear_eval.check_splits(schema.embedding_records(config.embeddings_dir), layouts)
  except (schema.EmbeddingFormatError, linear_eval.InconsistentInputError) as e:
    raise common.UsageError(f"--embeddings_dir {config.embeddings_dir}: {e}") from e
  for check, layout in zip(checks, layouts):
    if not check.num_train_clips:
      raise common.UsageError(
          f"--embeddings_dir {config.embeddings_dir}: split {check.split}: none of its "
          f"{len(layout.train_videos)} training videos has a clip")
  problems = [line for check in checks for line in check.problems(max_ids=3)]
  if problems and not config.allow_missing:
    raise IncompleteInputError(
        f"--embeddings_dir {config.embeddings_dir}: {'; '.join(problems)}; pass "
        "--allow_missing to score what is there (the report lists what was missing)")


def _load_split(config: LinearEvalConfig, layout: linear_eval.SplitLayout):
  start = time.perf_counter()
  features, check = linear_eval.collect_split_features(
      schema.embedding_records(config.embeddings_dir), layout)
  linear_eval.require_complete(check, config.allow_missing)
  if not check.complete:
    logging.warning("Scoring an incomplete split:\n%s", check.summary())
  return features, check, time.perf_counter() - start


class EvaluateSplit(beam.DoFn):
  """split -> SplitResult; saves the split's classifier."""

  def __init__(self, config: LinearEvalConfig):
    self._config = config

  def process(self, split: int, inputs: Inputs):
    features, check, load_seconds = _load_split(self._config, inputs.layouts[split])
    result = linear_eval.evaluate_split(
        features, check, self._config.svm_cs, self._config.svm_settings,
        load_seconds=load_seconds)
    result.classifier.save(
        f"{self._config.output_dir.rstrip('/')}/{report.classifier_name(split)}")
    logging.info("split %d: C=%g test top-1 %.4f", split, result.metrics["svm_c"],
                 result.metrics["test_top1"])
    yield result


def write_outputs(results: Sequence[linear_eval.SplitResult], config: LinearEvalConfig,
                  inputs: Inputs) -> None:
  """metrics.json, per-class CSV, confusion PNGs and report.md in --output_dir."""
  out = config.output_dir.rstrip("/")
  summary = linear_eval.summarise(results) | {"settings": config.to_json()}
  per_split = {r.split: (r.per_class_accuracy, r.per_class_videos) for r in results}
  report.write_bytes(f"{out}/{report.METRICS_FILE}",
                     json.dumps(report.strict_json(summary), indent=2, sort_keys=True,
                                allow_nan=False).encode())
  report.write_bytes(f"{out}/{report.PER_CLASS_FILE}",
                     report.per_class_csv(inputs.classes, per_split).encode())
  for r in results:
    report.write_bytes(f"{out}/{report.confusion_png_name(r.split)}",
                       report.confusion_png(r.confusion, inputs.classes,
                                            f"UCF101 split {r.split}, test videos"))
  markdown = report.markdown_report(
      summary, inputs.classes, per_split, {r.split: r.check.summary() for r in results},
      config.to_json())
  report.write_bytes(f"{out}/{report.REPORT_FILE}", markdown.encode())


def build_pipeline(pipeline: beam.Pipeline, config: LinearEvalConfig) -> None:
  """Adds the evaluation to `pipeline`.

  The split lists and run.json are read by a worker, so that the job can be
  built where they cannot be read (a dry run).
  """
  inputs = beam.pvalue.AsSingleton(
      pipeline | "Config" >> beam.Create([config]) | "ReadInputs" >> beam.Map(read_inputs))
  _ = (pipeline
       | "Splits" >> beam.Create(config.splits)
       | "SpreadSplits" >> beam.Reshuffle()
       | "EvaluateSplit" >> beam.ParDo(EvaluateSplit(config), inputs)
       | "AllSplits" >> beam.combiners.ToList()
       | "WriteOutputs" >> beam.Map(write_outputs, config, inputs))


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
  """Beam's options; by default, this process on the local runner."""
  options = PipelineOptions(common.with_local_runner(beam_args, common.IN_PROCESS_RUNNER_ARGS))
  options.view_as(SetupOptions).save_main_session = False
  return options


def start(config: LinearEvalConfig,
          options: PipelineOptions) -> beam.runners.runner.PipelineResult:
  """Checks what it can read before any work, then builds and runs the pipeline.

  A dry run reads nothing: the job is built where its inputs may not be
  readable.
  """
  if not options.view_as(TestOptions).dry_run:
    check_output_dir(config.output_dir)
    inputs = read_inputs(config)
    if options.view_as(StandardOptions).runner not in _REMOTE_RUNNERS:
      check_clips(config, inputs)
  pipeline = beam.Pipeline(options=options)
  build_pipeline(pipeline, config)
  return pipeline.run()


def run(argv: Sequence[str] | None = None) -> beam.runners.runner.PipelineResult:
  """Builds and runs the job; returns Beam's result (finished unless the runner is async)."""
  config, beam_args = parse_args(argv)
  return start(config, pipeline_options(beam_args))


def main(argv: Sequence[str] | None = None) -> None:
  """Runs the job to its end, then prints its summary (`report.console_summary`)."""
  started = time.monotonic()
  verbose = "--verbose" in (sys.argv[1:] if argv is None else argv)
  logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                      format="%(asctime)s %(message)s")
  config, beam_args = parse_args(argv)
  options = pipeline_options(beam_args)
  start(config, options).wait_until_finish()
  if options.view_as(TestOptions).dry_run:
    return
  with FileSystems.open(f"{config.output_dir.rstrip('/')}/{report.METRICS_FILE}") as f:
    summary = json.loads(f.read())
  print(report.console_summary(summary, config.output_dir, time.monotonic() - started),
        flush=True)


if __name__ == "__main__":
  # Run the imported module, not __main__, so that workers in other processes
  # can unpickle this module's classes by their real name.
  from pipelines import linear_eval
  common.run_main(linear_eval.main, linear_eval.PROG, sys.argv[1:])
