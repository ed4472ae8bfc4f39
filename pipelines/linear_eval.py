"""Beam job: UCF101 linear evaluation of an embedding job's clip embeddings.

  python -m pipelines.linear_eval --embeddings_dir=EMB --output_dir=OUT \
      [--splits=1,2,3] [--svm_c=0.001 | --svm_c=0.0001,0.0003,0.001] \
      [--solver=newton | --solver=liblinear] [--allow_missing]

Each split is one task: it streams every shard keeping only its split's
clips, scores each C of a sweep on held-out training groups (all C values
fitted on one standardised copy, sharing its Gram matrix), and retrains with
the best C on all training clips. Locally the splits run one after another in
this process (the solver uses every core); on Dataflow they run in parallel
on the workers. Writes `metrics.json`,
`per_class_accuracy.csv`, `report.md` with confusion-matrix PNGs, and
`classifiers/split{N}.npz` (see `mmv_core.linear_eval` and `mmv_core.report`).
"""

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions, TestOptions

from mmv_core import embedding_schema
from mmv_core import linear_eval
from mmv_core import report
from mmv_core import ucf101
from pipelines.common import IN_PROCESS_RUNNER_ARGS, with_local_runner


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


def parse_flags(argv: Sequence[str]) -> tuple[LinearEvalConfig, PipelineOptions]:
  """Splits argv into the job's settings and Beam's pipeline options."""
  defaults = linear_eval.DEFAULT_SVM_SETTINGS
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--embeddings_dir", required=True,
                      help="The embedding job's --output_dir (local or gs://).")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--splits_zip", default=None,
                      help="Split-list zip: local path, gs:// or https://. Default: the "
                      "one the embedding job used (its run.json), else UCF101's official "
                      "lists.")
  parser.add_argument("--splits", type=_comma_list(int), default=ucf101.SPLITS)
  parser.add_argument("--svm_c", type=_comma_list(float), default=(linear_eval.DEFAULT_SVM_C,),
                      help="C of the SVM; a comma-separated list runs a sweep.")
  parser.add_argument("--solver", choices=linear_eval.SOLVERS, default=defaults.solver,
                      help="newton: every class at once by matrix products (default); "
                      "liblinear: scikit-learn's LinearSVC, one class at a time, as the "
                      "original evaluation ran it. Same objective.")
  parser.add_argument("--svm_dual", type=_dual, default=defaults.dual,
                      help="liblinear only: LinearSVC's dual (true, false or auto).")
  parser.add_argument("--svm_tol", type=float, default=None,
                      help="newton: stop when each class's gradient norm falls to this "
                      f"fraction of its norm at zero (default {defaults.tol:g}); liblinear: "
                      f"LinearSVC's tol (default {linear_eval.ORIGINAL_SVM_SETTINGS.tol:g}, "
                      "the original's).")
  parser.add_argument("--svm_max_iter", type=int, default=defaults.max_iter,
                      help="newton: Newton iterations at most (a split that needs more "
                      "is an error); liblinear: LinearSVC's max_iter.")
  parser.add_argument("--allow_missing", action="store_true",
                      help="Score incomplete splits; the report lists what was missing.")
  args, beam_args = parser.parse_known_args(argv)
  unknown_splits = set(args.splits) - set(ucf101.SPLITS)
  if unknown_splits:
    parser.error(f"--splits: no split {sorted(unknown_splits)}; UCF101 has {ucf101.SPLITS}")
  if any(c <= 0 for c in args.svm_c):
    parser.error(f"--svm_c: C must be positive, got {args.svm_c}")
  config = LinearEvalConfig(
      embeddings_dir=args.embeddings_dir, output_dir=args.output_dir,
      splits_zip=args.splits_zip, splits=tuple(sorted(set(args.splits))),
      svm_cs=tuple(sorted(set(args.svm_c))),
      svm_settings=linear_eval.SvmSettings(
          solver=args.solver, dual=args.svm_dual, tol=args.svm_tol or (
              linear_eval.ORIGINAL_SVM_SETTINGS.tol if args.solver == linear_eval.SOLVER_LIBLINEAR
              else defaults.tol),
          max_iter=args.svm_max_iter),
      allow_missing=args.allow_missing)
  options = PipelineOptions(with_local_runner(beam_args, IN_PROCESS_RUNNER_ARGS))
  options.view_as(SetupOptions).save_main_session = False
  return config, options


Inputs = tuple[dict[int, linear_eval.SplitLayout], tuple[str, ...]]


def read_inputs(config: LinearEvalConfig) -> Inputs:
  """The layout of each split (videos, clips per video) and the class names."""
  run_config = embedding_schema.read_run_config(config.embeddings_dir)
  lists = ucf101.load_split_lists(
      config.splits_zip
      or run_config.get(embedding_schema.SETTINGS, {}).get(embedding_schema.SPLITS_ZIP)
      or ucf101.SPLITS_ZIP_URL)
  layouts = {s: linear_eval.SplitLayout.from_lists(
      lists, s, num_train_clips=run_config[embedding_schema.NUM_TRAIN_CLIPS],
      num_test_windows=run_config[embedding_schema.NUM_TEST_WINDOWS])
             for s in config.splits}
  return layouts, lists.class_names


def _load_split(config: LinearEvalConfig, layout: linear_eval.SplitLayout):
  start = time.perf_counter()
  features, check = linear_eval.collect_split_features(
      embedding_schema.embedding_records(config.embeddings_dir), layout)
  linear_eval.require_complete(check, config.allow_missing)
  if not check.complete:
    logging.warning("Scoring an incomplete split:\n%s", check.summary())
  return features, check, time.perf_counter() - start


class EvaluateSplit(beam.DoFn):
  """split -> SplitResult; saves the split's classifier."""

  def __init__(self, config: LinearEvalConfig):
    self._config = config

  def process(self, split: int, inputs: Inputs):
    layouts, _ = inputs
    features, check, load_seconds = _load_split(self._config, layouts[split])
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
  _, class_names = inputs
  out = config.output_dir.rstrip("/")
  summary = linear_eval.summarise(results) | {"settings": config.to_json()}
  per_split = {r.split: (r.per_class_accuracy, r.per_class_videos) for r in results}
  report.write_bytes(f"{out}/{report.METRICS_FILE}",
                     json.dumps(report.strict_json(summary), indent=2, sort_keys=True,
                                allow_nan=False).encode())
  report.write_bytes(f"{out}/{report.PER_CLASS_FILE}",
                     report.per_class_csv(class_names, per_split).encode())
  for r in results:
    report.write_bytes(f"{out}/{report.confusion_png_name(r.split)}",
                       report.confusion_png(r.confusion, class_names,
                                            f"UCF101 split {r.split}, test videos"))
  markdown = report.markdown_report(
      summary, class_names, per_split, {r.split: r.check.summary() for r in results},
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


def run(argv: Sequence[str] | None = None) -> beam.runners.runner.PipelineResult:
  """Builds and runs the job; returns Beam's result (finished unless the runner is async)."""
  config, options = parse_flags(argv)
  if not options.view_as(TestOptions).dry_run:
    read_inputs(config)  # A bad split list or run.json fails here, before any work.
  pipeline = beam.Pipeline(options=options)
  build_pipeline(pipeline, config)
  return pipeline.run()


def main(argv: Sequence[str] | None = None) -> None:
  run(argv).wait_until_finish()


if __name__ == "__main__":
  logging.getLogger().setLevel(logging.INFO)
  # Run the imported module, not __main__, so that workers in other processes
  # can unpickle this module's classes by their real name.
  from pipelines import linear_eval
  linear_eval.main()
