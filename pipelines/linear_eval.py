"""Beam job: evaluation of an embedding job's clip embeddings: linear probe, kNN, retrieval, few-shot.

  python -m pipelines.linear_eval --embeddings_dir=EMB --output_dir=OUT \
      [--protocols=linear,knn,retrieval,fewshot] \
      [--splits=1,2,3] [--svm_c=0.001 | --svm_c=0.0001,0.0003,0.001] \
      [--solver=newton | --solver=liblinear] [--allow_missing] [--overwrite]

The dataset, its split definitions and its classes are those the embedding
job recorded in its run.json (the dataset's split flag overrides them),
and every split the dataset has is evaluated unless --splits says otherwise.
The videos evaluated are those the embedding job was asked for, limited to
the --classes and --max_videos it ran with. C defaults to the dataset's
protocol for the embeddings' backbone. Before any work the job checks its
flags, that --output_dir holds no earlier metrics, run.json, the split lists
and, on a local runner, that every clip of those videos is there (one pass
over the clips' headers); each problem is one line on stderr and exit
status 2. Then it claims --output_dir as the embedding job does (its
`run.owner`, created by one run only): one evaluation per directory, and
--overwrite deletes an earlier one's.

Each split is one task: it streams every shard keeping only its split's
clips, scores each C of a sweep on held-out training groups (all C values
fitted on one standardised copy, sharing its Gram matrix), and retrains with
the best C on all training clips; then, as --protocols asks, kNN and
retrieval over video features and few-shot probes (docs/protocol.md). Locally the splits run one after another in
this process (the solver uses every core); on Dataflow they run in parallel
on the workers. Writes `metrics.json`,
`per_class_accuracy.csv`, `report.md` with confusion-matrix PNGs, and
`classifiers/split{N}.npz` (see `mmv_core.evaluation.linear_eval` and `mmv_core.evaluation.report`),
then prints the metrics table, with the accuracies that mean little marked
and the reason, the output paths and the wall time.
"""

import dataclasses
import logging
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions, TestOptions

from mmv_core import datasets
from mmv_core.embeddings import schema
from mmv_core.evaluation import linear_eval
from mmv_core.evaluation import report
from mmv_core.video import sources
from pipelines import common
from pipelines import ownership
from pipelines import run_records
from pipelines.linear_eval_config import PROG, LinearEvalConfig, parse_args


class IncompleteInputError(common.UsageError, linear_eval.IncompleteSplitError):
  """Clips of the evaluated videos are missing and --allow_missing was not given.

  A usage error (one line, exit status 2) that callers of `main` can also
  catch as the library's `IncompleteSplitError`.
  """


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What the evaluation reads before the clips.

  Attributes:
    dataset: the dataset's name.
    layouts: split -> its videos among those the embedding job was asked
      for, and their clip counts; one entry per split to evaluate.
    classes: the classes of those videos, label -> name, in label order.
    svm_cs: the C values to evaluate (the flag's, else the protocol's; none when no
      protocol asked for fits a linear probe).
    evaluated: what the embeddings are of, from their run.json
      (`run_records.evaluated_record`), so that a results file read alone says it.
  """

  dataset: str
  layouts: dict[int, linear_eval.SplitLayout]
  classes: dict[int, str]
  svm_cs: tuple[float, ...]
  evaluated: dict


def read_inputs(config: LinearEvalConfig) -> Inputs:
  """Reads run.json and the dataset's listing; keeps the videos the embedding job was asked for.

  The dataset is the one run.json records (in its "dataset" entry; runs
  before it were of UCF101), which --dataset, if given, must name. The
  split definitions are the split flag's, else those run.json records.

  Raises:
    common.UsageError: run.json or the listing cannot be read, run.json
      names classes that the listing lacks, --splits names a split the
      dataset does not have, or --dataset names another dataset.
  """
  try:
    run_config = schema.read_run_config(config.embeddings_dir)
  except schema.EmbeddingFormatError as e:
    raise common.UsageError(
        f"--embeddings_dir {config.embeddings_dir} is not an embedding job's output: {e}"
    ) from e
  settings = run_config.get(schema.SETTINGS, {})
  recorded = run_config.get("dataset") or {}
  # Runs from before run.json recorded the dataset were all of UCF101.
  embedded_dataset = recorded.get("name", datasets.UCF101.name)
  if config.dataset and config.dataset != embedded_dataset:
    # Its video ids are another dataset's: no split list of this one names them.
    raise common.UsageError(
        f"--dataset={config.dataset}, but the embeddings in {config.embeddings_dir} are of "
        f"{embedded_dataset} ({schema.RUN_CONFIG_FILE}); leave --dataset out"
    )
  spec = _dataset(embedded_dataset)
  recorded_splits = recorded.get("splits_location") or settings.get(spec.splits_flag)
  recorded_videos = recorded.get("videos_location") or settings.get(spec.videos_flag)
  try:
    listing = spec.list_videos(config.splits_location or recorded_splits, recorded_videos)
    videos = listing.select(settings.get(schema.CLASSES), settings.get(schema.MAX_VIDEOS))
  except (sources.SourceError, ValueError) as e:  # ValueError: listing errors, unknown classes.
    given_by = (
        f"--{spec.splits_flag}"
        if config.splits_location
        else f"the split lists of {config.embeddings_dir}/{schema.RUN_CONFIG_FILE}"
    )
    raise common.UsageError(f"{given_by}: {e}") from e
  unknown_splits = sorted(set(config.splits or ()) - set(listing.splits))
  if unknown_splits:
    raise common.UsageError(
        f"--splits: no split {unknown_splits}; {spec.name.upper()} has splits "
        f"{', '.join(map(str, listing.splits))}"
    )
  asked_for = dataclasses.replace(listing, videos=tuple(videos))
  layouts = {
      s: linear_eval.SplitLayout.from_lists(
          asked_for,
          s,
          num_train_clips=run_config[schema.NUM_TRAIN_CLIPS],
          num_test_windows=run_config[schema.NUM_TEST_WINDOWS],
      )
      for s in config.splits or listing.splits
  }
  labels = sorted({v.label for v in videos})
  svm_cs = config.svm_cs or ()
  if not svm_cs and set(linear_eval.PROBE_PROTOCOLS) & set(config.protocols):
    svm_cs = (protocol_svm_c(spec, run_config.get("backbone")),)
  return Inputs(
      dataset=spec.name,
      layouts=layouts,
      classes={label: listing.class_names[label] for label in labels},
      svm_cs=svm_cs,
      evaluated=run_records.evaluated_record(config.embeddings_dir, run_config, spec.name),
  )


def protocol_svm_c(spec: datasets.DatasetSpec, backbone: str | None) -> float:
  """The dataset's protocol C for `backbone` (None: run.json names none).

  Raises:
    common.UsageError: no backbone is known and the protocol's C depends on it.
  """
  if backbone is not None:
    return spec.protocol.svm_c_for(backbone)
  cs = {c for _, c in spec.protocol.svm_c}
  if len(cs) > 1:
    raise common.UsageError(
        f"the embeddings' run.json names no backbone, and {spec.name}'s "
        "protocol C depends on it: pass --svm_c"
    )
  return cs.pop()


def _dataset(name: str) -> datasets.DatasetSpec:
  try:
    return datasets.get(name)
  except datasets.UnknownDatasetError as e:
    raise common.UsageError(str(e)) from e


_OWNED_DIR_REMEDY = "choose a new --output_dir, or pass --overwrite to delete it and start again"


def check_output_dir(config: LinearEvalConfig) -> None:
  """Refuses, before any input is read, an --output_dir that `claim_output_dir` would refuse.

  That is one another run claimed (unless --overwrite), or one holding the
  metrics.json of an evaluation that claimed nothing (written before
  claims existed), which --overwrite does not delete either.
  """
  if FileSystems.exists(ownership.owner_path(config.output_dir)):
    if not config.overwrite:
      raise ownership.owned_error(config.output_dir, PROG, _OWNED_DIR_REMEDY)
  elif FileSystems.exists(f"{config.output_dir.rstrip('/')}/{report.METRICS_FILE}"):
    raise common.UsageError(
        f"--output_dir {config.output_dir} already holds {report.METRICS_FILE}, of an "
        "evaluation that did not claim it; choose a new --output_dir"
    )


def claim_output_dir(config: LinearEvalConfig) -> None:
  """Makes this evaluation the one owner of --output_dir (`ownership.claim_output_dir`)."""
  ownership.claim_output_dir(
      config.output_dir,
      {"job": PROG, "settings": config.to_json()},
      remedy=_OWNED_DIR_REMEDY,
      overwrite=config.overwrite,
      inputs={
          "--embeddings_dir": config.embeddings_dir,
          "the split definitions": config.splits_location,
      },
  )


def check_clips(config: LinearEvalConfig, inputs: Inputs) -> None:
  """Refuses, before any split is loaded, clips that cannot be evaluated.

  One pass over the clips' headers (`linear_eval.check_splits`).

  Raises:
    common.UsageError: a shard is unreadable, a label disagrees with the
      split lists, or a split has no training clip.
    IncompleteInputError: clips are missing, duplicated or beyond the
      expected count and --allow_missing was not given.
  """
  layouts = list(inputs.layouts.values())
  try:
    checks = linear_eval.check_splits(schema.embedding_records(config.embeddings_dir), layouts)
  except (schema.EmbeddingFormatError, linear_eval.InconsistentInputError) as e:
    raise common.UsageError(f"--embeddings_dir {config.embeddings_dir}: {e}") from e
  for check, layout in zip(checks, layouts):
    if not check.num_train_clips:
      raise common.UsageError(
          f"--embeddings_dir {config.embeddings_dir}: split {check.split}: none of its "
          f"{len(layout.train_videos)} training videos has a clip"
      )
  problems = [line for check in checks for line in check.problems(max_ids=3)]
  if problems and not config.allow_missing:
    raise IncompleteInputError(
        f"--embeddings_dir {config.embeddings_dir}: {'; '.join(problems)}; pass "
        "--allow_missing to score what is there (the report lists what was missing)"
    )


def _load_split(config: LinearEvalConfig, layout: linear_eval.SplitLayout):
  start = time.perf_counter()
  features, check = linear_eval.collect_split_features(
      schema.embedding_records(config.embeddings_dir), layout
  )
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
        features,
        check,
        inputs.svm_cs,
        self._config.svm_settings,
        load_seconds=load_seconds,
        protocols=self._config.protocols,
    )
    if result.classifier is not None:
      result.classifier.save(
          f"{self._config.output_dir.rstrip('/')}/{report.classifier_name(split)}"
      )
    logging.info("split %d: %s", split, {k: result.metrics.get(k) for k in _LOGGED_METRICS})
    yield result


# What a split's log line (with --verbose) shows of its metrics.
_LOGGED_METRICS = ("svm_c", "test_top1", linear_eval.KNN_TOP1, linear_eval.RETRIEVAL_RECALL)


def write_outputs(
    results: Sequence[linear_eval.SplitResult], config: LinearEvalConfig, inputs: Inputs
) -> None:
  """metrics.json, per-class CSV, confusion PNGs and report.md in --output_dir."""
  out = config.output_dir.rstrip("/")
  settings = config.to_json() | {
      "dataset": inputs.dataset,
      "splits": sorted(inputs.layouts),
      "svm_cs": list(inputs.svm_cs),
  }
  summary = run_records.evaluation_record(results, settings, inputs.evaluated)
  per_split = {
      r.split: (r.per_class_accuracy, r.per_class_videos)
      for r in results
      if r.per_class_accuracy is not None
  }
  run_records.write_record(f"{out}/{report.METRICS_FILE}", summary)
  if per_split:
    report.write_bytes(
        f"{out}/{report.PER_CLASS_FILE}", report.per_class_csv(inputs.classes, per_split).encode()
    )
  for r in results:
    if r.confusion is None:
      continue
    report.write_bytes(
        f"{out}/{report.confusion_png_name(r.split)}",
        report.confusion_png(
            r.confusion, inputs.classes, f"{inputs.dataset.upper()} split {r.split}, test videos"
        ),
    )
  markdown = report.markdown_report(
      summary, inputs.classes, per_split, {r.split: r.check.summary() for r in results}, settings
  )
  report.write_bytes(f"{out}/{report.REPORT_FILE}", markdown.encode())


def build_pipeline(
    pipeline: beam.Pipeline, config: LinearEvalConfig, local_inputs: Inputs | None = None
) -> None:
  """Adds the evaluation to `pipeline`.

  `local_inputs`, read before the job on a local runner, go in as they are.
  Otherwise a worker reads the split lists and run.json: the job can then be
  built where they cannot be read (a dry run), and Dataflow's job graph
  does not carry every split's layout.
  """
  if local_inputs is None:
    read = pipeline | "Config" >> beam.Create([config]) | "ReadInputs" >> beam.Map(read_inputs)
  else:
    read = pipeline | "Inputs" >> beam.Create([local_inputs])
  inputs = beam.pvalue.AsSingleton(read)
  _ = (
      inputs.pvalue
      | "Splits" >> beam.FlatMap(lambda read: sorted(read.layouts))
      | "SpreadSplits" >> beam.Reshuffle()
      | "EvaluateSplit" >> beam.ParDo(EvaluateSplit(config), inputs)
      | "AllSplits" >> beam.combiners.ToList()
      | "WriteOutputs" >> beam.Map(write_outputs, config, inputs)
  )


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
  """Beam's options; by default, this process on the local runner."""
  options = PipelineOptions(common.with_local_runner(beam_args, common.IN_PROCESS_RUNNER_ARGS))
  options.view_as(SetupOptions).save_main_session = False
  return options


def start(config: LinearEvalConfig, options: PipelineOptions) -> beam.runners.runner.PipelineResult:
  """Checks what it can read before any work, then builds and runs the pipeline.

  A dry run reads nothing: the job is built where its inputs may not be
  readable.
  """
  local_inputs = None
  if not options.view_as(TestOptions).dry_run:
    check_output_dir(config)
    inputs = read_inputs(config)
    # Elsewhere each split's task checks its clips, rather than every shard
    # being read on the launching machine first.
    if common.runs_locally(options):
      check_clips(config, inputs)
      local_inputs = inputs
    # Claimed once the inputs are known good, so a refused run leaves nothing behind.
    claim_output_dir(config)
  pipeline = beam.Pipeline(options=options)
  build_pipeline(pipeline, config, local_inputs)
  return pipeline.run()


def run(argv: Sequence[str] | None = None) -> beam.runners.runner.PipelineResult:
  """Builds and runs the job; returns Beam's result (finished unless the runner is async)."""
  config, beam_args = parse_args(argv)
  return start(config, pipeline_options(beam_args))


def main(argv: Sequence[str] | None = None) -> None:
  """Runs the job to its end, then prints its summary (`report.console_summary`)."""
  started = time.monotonic()
  common.configure_logging(argv)
  config, beam_args = parse_args(argv)
  options = pipeline_options(beam_args)
  with common.interrupt_exits(
      PROG, lambda: "interrupted; its output is incomplete: rerun with --overwrite"
  ):
    start(config, options).wait_until_finish()
  if options.view_as(TestOptions).dry_run:
    return
  report_outcome(config, time.monotonic() - started)


def report_outcome(config: LinearEvalConfig, seconds: float) -> None:
  """Prints a finished evaluation's summary (`report.console_summary`)."""
  summary = run_records.read_evaluation(config.output_dir)
  print(report.console_summary(summary, config.output_dir, seconds), flush=True)


if __name__ == "__main__":
  # Run the imported module, not __main__, so that workers in other processes
  # can unpickle this module's classes by their real name.
  from pipelines import linear_eval

  common.run_main(linear_eval.main, linear_eval.PROG, sys.argv[1:])
