"""What every job shares: the local runner, metrics, failure records, user errors.

A failure record is a dict `{"video_id", "stage", "reason"}`; DoFns emit
them on the `FAILURES` tagged output, and jobs write them as JSON lines.

A `UsageError` is a problem with what the user asked for (a setting, a
missing input, an output directory in use): `run_main` prints it as one line
on stderr and exits with status 2, as argparse does for a bad flag. Any
other exception is a bug or an outage and keeps its traceback.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import difflib
import json
import logging
import os
import signal
import sys
import threading
import time
import typing
import uuid
from collections.abc import Callable, Iterable, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DebugOptions, DirectOptions, PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions

METRICS_NAMESPACE = "mmv"
FAILURES = "failures"
# Beam 2.77's DirectRunner first tries to download the Prism runner, which
# fails offline; the FnApiRunner works offline and, in multi-processing mode,
# uses every core (0 workers: one per core).
LOCAL_RUNNER_ARGS = (
    "--runner=FnApiRunner",
    "--direct_num_workers=0",
    "--direct_running_mode=multi_processing",
)
# For a job whose work uses every core by itself (BLAS, XLA): no worker
# processes to start, each importing the job's modules, loading the model and
# compiling again, and contending for the same cores.
IN_PROCESS_RUNNER_ARGS = (
    "--runner=FnApiRunner",
    "--direct_num_workers=1",
    "--direct_running_mode=in_memory",
)


USAGE_ERROR_STATUS = 2
# A shell's status for a process ended by SIGINT (128 + 2).
INTERRUPTED_STATUS = 130
VERBOSE_FLAG = "--verbose"


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Appends each flag's default to its help, unless the help says it in words."""

  def _get_help_string(self, action):
    if action.default is None and "default" in (action.help or ""):
      return action.help
    return super()._get_help_string(action)


class JobArgumentParser(argparse.ArgumentParser):
  """A job's command line: every flag's default in --help, and errors as `UsageError`.

  Only whole flag names are taken (argparse's prefix matching is off).

  argparse would print its whole usage block before the error; through
  `run_main` the error is one line. A flag that is not this parser's but
  close to one of its flags is named with the flag it may mean, so that a
  misspelt required flag is not reported only as missing. Subparsers
  (`add_subparsers`) are of this class too.
  """

  def __init__(self, **kwargs):
    kwargs.setdefault("formatter_class", _DefaultsHelpFormatter)
    # A prefix of a flag (`--num_frame` for `--num_frames`) is a misspelling, not the flag.
    kwargs.setdefault("allow_abbrev", False)
    super().__init__(**kwargs)
    self._given: list[str] = []

  def parse_known_args(self, args=None, namespace=None):
    self._given = list(sys.argv[1:] if args is None else args)
    return super().parse_known_args(args, namespace)

  def error(self, message: str):
    raise UsageError(f"{message}{self._misspelling_hint()} (see {self.prog} --help)")

  def _misspelling_hint(self) -> str:
    own_flags = [flag for flag in self._option_string_actions if flag.startswith("--")]
    # Flags of neither this parser nor Beam (which takes the ones jobs pass on).
    strangers = [
        arg
        for arg in unknown_beam_args(self._given)
        if arg.startswith("--") and arg.split("=", 1)[0] not in self._option_string_actions
    ]
    hints = []
    for arg in strangers:
      flag = arg.split("=", 1)[0]
      near = difflib.get_close_matches(flag, own_flags, n=1)
      if near:
        hints.append(f"{flag} (did you mean {near[0]}?)")
    return f"; unrecognized: {', '.join(hints)}" if hints else ""


def job_parser(prog: str, description: str, epilog: str) -> JobArgumentParser:
  """A job's command line, with `python -m` usage (`prog`)."""
  return JobArgumentParser(prog=prog, description=description, epilog=epilog)


def add_required_flag(parser: argparse.ArgumentParser, flag: str, help_text: str) -> None:
  """A flag without which the job cannot run; --help says "required", having no default."""
  parser.add_argument(flag, required=True, default=argparse.SUPPRESS, help=f"{help_text}; required")


def add_verbose_flag(parser: argparse.ArgumentParser, what: str) -> None:
  parser.add_argument(VERBOSE_FLAG, action="store_true", help=f"show {what}")


def configure_logging(argv: Sequence[str] | None) -> None:
  """Warnings and errors only, unless `--verbose` is among `argv` (default sys.argv).

  Read from the raw arguments, before parsing, so that what parsing logs
  follows the choice too.
  """
  verbose = VERBOSE_FLAG in (sys.argv[1:] if argv is None else argv)
  logging.basicConfig(
      level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(message)s"
  )
  # Beam 2.77's RunInference warns this at every model load when one of its
  # optional imports fails; the memory figure it cannot get is not used here.
  logging.getLogger().addFilter(
      lambda record: not record.getMessage().startswith("Resource module is not available")
  )


class UsageError(Exception):
  """What the user asked for cannot be done; the message says what and how to fix it."""


def run_main(
    main: Callable[[Sequence[str] | None], object], prog: str, argv: Sequence[str] | None = None
) -> None:
  """Runs a job's `main`; a `UsageError` becomes one line on stderr and exit status 2."""
  try:
    main(argv)
  except UsageError as error:
    print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR_STATUS)


@contextlib.contextmanager
def interrupt_exits(prog: str, message: Callable[[], str], status: int = INTERRUPTED_STATUS):
  """Ctrl-C in the block ends the process with one line, `prog: message()`, and `status`.

  The interrupt still unwinds the job (temporary files are cleaned up as
  usual), but logging is silenced from that moment: Beam would log the
  interrupted bundle's traceback, some 200 lines. `message` may clean up
  what the job leaves behind before it says so. Only in the main thread,
  where Python delivers signals.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  interrupted = threading.Event()

  def on_interrupt(signum, frame):
    del signum, frame
    interrupted.set()
    logging.disable(logging.CRITICAL)
    raise KeyboardInterrupt

  previous = signal.signal(signal.SIGINT, on_interrupt)
  try:
    yield
  except BaseException:
    if not interrupted.is_set():
      raise
    print(f"{prog}: {message()}", file=sys.stderr, flush=True)
    sys.exit(status)
  finally:
    signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
      logging.disable(logging.NOTSET)


def unknown_beam_args(args: Sequence[str]) -> list[str]:
  """The arguments of `args` that no Beam pipeline option takes.

  They are what Beam's own parser of every option leaves over:
  `get_all_options` hands that parser to `add_extra_args_fn` before it
  parses (and, told to retain unknown arguments, warns of none).
  """
  unknown = []
  PipelineOptions(args).get_all_options(
      add_extra_args_fn=lambda parser: unknown.extend(parser.parse_known_args(args)[1]),
      retain_unknown_options=True,
  )
  return unknown


def check_beam_flags(beam_args: Sequence[str], prog: str) -> None:
  """Raises UsageError naming the arguments that no Beam pipeline option takes,
  or options that make Beam lose elements (`lossy_runner_problem`).

  A job passes Beam the flags it does not know itself; Beam would drop the
  unknown ones with a warning, so a misspelt option would go unnoticed.
  """
  unknown = unknown_beam_args(beam_args)
  if unknown:
    raise UsageError(
        f"unrecognized arguments: {' '.join(unknown)} (neither a flag of {prog} "
        "nor a Beam pipeline option)"
    )
  problem = lossy_runner_problem(PipelineOptions(beam_args))
  if problem:
    raise UsageError(problem)


# Beam 2.77's threaded local runner flushes each worker's output buffer from a
# timer thread without a lock against the thread that writes to it: elements
# written during a flush are dropped, or cut in two (docs/reliability.md,
# "Threaded runners"). Worker processes (`multi_processing`) and Dataflow's
# SDK harness flush by size, on the writing thread, unless told otherwise by
# this experiment.
_TIMED_FLUSH_EXPERIMENT = "data_buffer_time_limit_ms="


def lossy_runner_problem(options: PipelineOptions) -> str | None:
  """Why these Beam options could lose elements without an error, or None."""
  if options.view_as(DirectOptions).direct_running_mode == "multi_threading":
    return (
        "--direct_running_mode=multi_threading loses elements in Beam 2.77 (its workers' "
        "output buffers are flushed by a timer thread without a lock; docs/reliability.md); "
        "leave the running mode out: the jobs run their own threads where they need them"
    )
  for experiment in options.view_as(DebugOptions).experiments or ():
    value = experiment.removeprefix(_TIMED_FLUSH_EXPERIMENT)
    if value != experiment and (not value.lstrip("-").isdigit() or int(value) > 0):
      return (
          f"--experiments={experiment} turns on the timed output flush that loses elements "
          "when an SDK process runs several threads (docs/reliability.md); leave it out"
      )
  return None


def with_local_runner(
    beam_args: Sequence[str], local_args: Sequence[str] = LOCAL_RUNNER_ARGS
) -> list[str]:
  """Beam options, run on the local runner (`local_args`) unless they name a runner."""
  if any(arg.startswith("--runner") for arg in beam_args):
    return list(beam_args)
  given = {arg.split("=", 1)[0] for arg in beam_args}
  return [*(a for a in local_args if a.split("=", 1)[0] not in given), *beam_args]


def runs_locally(options: PipelineOptions) -> bool:
  """Whether the job runs on this machine (Beam's local runners), where what the launching
  process read can go into the pipeline as it is."""
  runner = options.view_as(StandardOptions).runner
  return runner in (None, "DirectRunner", "FnApiRunner", "BundleBasedDirectRunner")


def runs_in_one_process(options: PipelineOptions) -> bool:
  """Whether the whole job runs in this process: Beam's local runner, not multi-processing."""
  multi_processing = options.view_as(DirectOptions).direct_running_mode == "multi_processing"
  return runs_locally(options) and not multi_processing


def host_threads(options: PipelineOptions) -> int:
  """Threads a step whose work leaves the GIL (ffmpeg, decoding) may keep busy in one worker.

  Every core where the job runs in this one process; one elsewhere, where
  the runner starts a worker per core (local worker processes, Dataflow).
  """
  return (os.cpu_count() or 1) if runs_in_one_process(options) else 1


def absolute_location(location: str | None) -> str | None:
  """A local path made absolute (a run record read from elsewhere still finds it); URLs as given."""
  if location is None or "://" in location:
    return location
  return os.path.abspath(os.path.expanduser(location))


class OrderedLookahead:
  """Runs `work` on up to `depth` elements at once, one thread each; results leave in input order.

  For a DoFn whose work per element mostly waits outside the GIL (an ffmpeg
  process, JPEG decoding, compiled resizing): `process` submits its element
  and emits what `ready(depth)` yields; `finish_bundle` emits `ready(0)` and
  `close`s; `teardown` `close(wait=False)`s (a failed or interrupted bundle
  leaves no threads working). Each result keeps its element's timestamp and
  window, since it may leave during a later element's `process` or in
  `finish_bundle` (where Beam wants windowed values). At most `depth`
  elements are worked on at once, and `depth + 1` held; `depth` 0 runs each
  element before the next is taken.
  """

  def __init__(self, work: Callable, depth: int, thread_name: str):
    self._work = work
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max(1, depth), thread_name_prefix=thread_name
    )
    self._in_flight: collections.deque = collections.deque()

  def submit(self, element, timestamp, window) -> None:
    self._in_flight.append((self._pool.submit(self._run, element), timestamp, window))

  def ready(self, keep: int):
    """Yields (result, seconds waited for it, timestamp, window) until `keep` are in flight.

    The counters that the work incremented (`counter`) are counted here, on
    the calling thread, where Beam keeps them.
    """
    while len(self._in_flight) > keep:
      future, timestamp, window = self._in_flight.popleft()
      wait_start = time.perf_counter()
      result, increments = future.result()
      waited = time.perf_counter() - wait_start
      for name, n in increments:
        counter(name).inc(n)
      yield result, waited, timestamp, window

  def _run(self, element):
    _thread_increments.pending = []
    try:
      return self._work(element), _thread_increments.pending
    finally:
      _thread_increments.pending = None

  def close(self, wait: bool = True) -> None:
    self._pool.shutdown(wait=wait, cancel_futures=True)


class ProgressLogger(beam.DoFn):
  """Prints progress lines per worker process: at the first element, then every 10 s.

  Each element is one `what` done (e.g. "clips embedded") of `expected` in
  the job; the line starts with `prefix` (e.g. "[embed]"). Counts are per
  process: give `expected` only when the job runs in one
  (`runs_in_one_process`); elsewhere each process's lines give its count
  and rate, and the job's sum is in the runner's counters. Emits nothing.

  Apply it directly to the step that does the work: it then runs in that
  step's fused stage as each element comes. After a Flatten or a grouping,
  elements would reach it all at once, when the stage before had finished.
  One logger may be applied to several such steps (a step's results and its
  failures): its copies in a process share one tally.
  """

  _INTERVAL_S = 10.0
  # Tally of each logger (by id), shared by its copies in this process.
  _tallies: dict[str, "_Tally"] = {}
  _tallies_lock = threading.Lock()

  def __init__(self, prefix: str, what: str, expected: int | None):
    self._id = uuid.uuid4().hex
    self._prefix = prefix
    self._what = what
    self._expected = expected

  def expect(self, expected: int | None) -> None:
    """Sets the total the lines count against; before the pipeline is built."""
    self._expected = expected

  @property
  def expected(self) -> int | None:
    """The total the lines count against, if known."""
    return self._expected

  def done(self) -> int:
    """How many elements this process's copies of the logger have counted."""
    with self._tallies_lock:
      tally = self._tallies.get(self._id)
    return tally.done if tally else 0

  def setup(self):
    with self._tallies_lock:
      self._tally = self._tallies.setdefault(self._id, _Tally())

  def process(self, element):
    del element
    line = self._tally.count(self._expected, self._what, self._INTERVAL_S)
    if line:
      # Printed, not logged: local runners relay worker logs in a form hard to read.
      print(f"{self._prefix} {line}", file=sys.stderr, flush=True)
    return ()


class _Tally:
  """Elements done, and when the first and the last line were, under a lock."""

  def __init__(self):
    self._lock = threading.Lock()
    self._done = 0
    self._first = self._last_line = None

  @property
  def done(self) -> int:
    return self._done

  def count(self, expected: int | None, what: str, interval_s: float) -> str | None:
    """Counts one element; returns the line to print now, if one is due."""
    with self._lock:
      self._done += 1
      now = time.monotonic()
      if self._first is None:
        self._first = now
      due = self._last_line is None or now - self._last_line >= interval_s
      if not (due or self._done == expected):
        return None
      self._last_line = now
      return progress_line(self._done, expected, now - self._first, what)


def progress_line(done: int, expected: int | None, since_first_s: float, what: str) -> str:
  """E.g. "120/200 clips embedded (60%), 1.60/s, about 50 s left".

  The rate counts from the first element, so the start-up before it (model
  loading, compiling) does not skew the time left; the first line has none.
  """
  line = (
      f"{done}/{expected} {what} ({100 * done / expected:.0f}%)" if expected else f"{done} {what}"
  )
  if done < 2 or since_first_s <= 0:
    return line
  rate = (done - 1) / since_first_s
  line += f", {rate:.2f}/s"
  if expected and done < expected:
    line += f", about {(expected - done) / rate:.0f} s left"
  return line


# Counter increments made in an `OrderedLookahead` thread, kept for the bundle's
# thread: Beam counts metrics per processing thread and drops those of others.
_thread_increments = threading.local()


class _DeferredCounter(typing.NamedTuple):
  name: str
  increments: list

  def inc(self, n: int = 1) -> None:
    self.increments.append((self.name, n))


def counter(name: str):
  increments = getattr(_thread_increments, "pending", None)
  if increments is not None:
    return _DeferredCounter(name, increments)
  return Metrics.counter(METRICS_NAMESPACE, name)


def distribution(name: str):
  return Metrics.distribution(METRICS_NAMESPACE, name)


def failure_record(video_id: str, stage: str, reason: str) -> dict[str, str]:
  return {"video_id": video_id, "stage": stage, "reason": reason}


def count_failure(record: dict[str, str]) -> dict[str, str]:
  """Counts a video's final failure in the job's metrics; returns the record."""
  counter("videos_failed").inc()
  counter(f"failed_{record['stage']}").inc()
  return record


def failure(video_id: str, stage: str, reason: str) -> dict[str, str]:
  """A failure record, counted."""
  return count_failure(failure_record(video_id, stage, reason))


def counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
  """Committed values of the jobs' counters, once the pipeline has finished."""
  query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(METRICS_NAMESPACE))
  totals: dict[str, int] = collections.Counter()
  for metric in query["counters"]:
    totals[metric.key.metric.name] += metric.committed
  return dict(totals)


class WriteFailures(beam.PTransform):
  """Writes failure records as sorted-key JSON lines to the one file `path`."""

  def __init__(self, path: str):
    super().__init__()
    self._path = path

  def expand(self, failures):
    return (
        failures
        | "ToJson" >> beam.Map(lambda record: json.dumps(record, sort_keys=True))
        | "Write" >> beam.io.WriteToText(self._path, shard_name_template="")
    )


def summarize_failures(records: Iterable[dict[str, str]], max_examples: int = 5) -> str:
  """A short text summary: count per stage and the first few reasons."""
  records = sorted(records, key=lambda r: (r["stage"], r["video_id"]))
  if not records:
    return "no failures"
  by_stage = collections.Counter(r["stage"] for r in records)
  lines = [
      f"{len(records)} videos failed: "
      + ", ".join(f"{stage} {n}" for stage, n in sorted(by_stage.items()))
  ]
  lines += [f"  {r['video_id']} [{r['stage']}]: {r['reason']}" for r in records[:max_examples]]
  if len(records) > max_examples:
    lines.append(f"  ... and {len(records) - max_examples} more")
  return "\n".join(lines)
