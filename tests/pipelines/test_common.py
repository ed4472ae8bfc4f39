"""What the jobs share: output directories and their claims."""

import threading

import apache_beam as beam
import apache_beam.testing.util
import pytest
from apache_beam.io.filesystems import FileSystems

from launch import demo
from mmv_core import checkpoints
from mmv_core.datasets import synthetic
from pipelines import common
from pipelines import ownership


@pytest.mark.parametrize(
    "location, directory, within",
    [
        ("/a/b/c.pkl", "/a/b", True),
        ("/a/b", "/a/b/", True),
        ("/a/bc/c.pkl", "/a/b", False),
        ("/a/b/../x.pkl", "/a/b", False),
        ("gs://bucket/run/ckpt.pkl", "gs://bucket/run", True),
        ("gs://bucket/runs/ckpt.pkl", "gs://bucket/run", False),
        ("https://host/run/x.zip", "/run", False),
    ],
)
def test_is_within_tells_what_deleting_a_directory_would_delete(location, directory, within):
  assert ownership.is_within(location, directory) == within


def test_progress_lines_give_the_total_and_time_left():
  # 49 clips in the 24.5 s since the first one: 2 per second.
  assert common.progress_line(50, 200, 24.5, "clips embedded") == (
      "50/200 clips embedded (25%), 2.00/s, about 75 s left"
  )
  assert common.progress_line(201, 201, 100.0, "clips embedded") == (
      "201/201 clips embedded (100%), 2.00/s"
  )
  assert common.progress_line(1, 200, 0.0, "clips embedded") == "1/200 clips embedded (0%)"
  assert common.progress_line(8, None, 2.0, "videos read") == "8 videos read, 3.50/s"


def test_a_logger_applied_to_several_steps_counts_them_together(capsys):
  progress = common.ProgressLogger("[test]", "videos settled", 5)
  with beam.Pipeline(
      options=beam.options.pipeline_options.PipelineOptions(list(common.IN_PROCESS_RUNNER_ARGS))
  ) as pipeline:
    for label, values in (("Encoded", [1, 2, 3]), ("Failed", [4]), ("Cached", [5])):
      _ = pipeline | label >> beam.Create(values) | f"Progress{label}" >> beam.ParDo(progress)
  lines = capsys.readouterr().err.splitlines()
  assert lines[0] == "[test] 1/5 videos settled (20%)"
  assert lines[-1].startswith("[test] 5/5 videos settled (100%)")


JOB = {"job": "python -m pipelines.embed"}


def _write(path: str, data: bytes = b"x") -> None:
  with FileSystems.create(path) as f:
    f.write(data)


def _files(directory: str) -> list[str]:
  return sorted(m.path for m in FileSystems.match([f"{directory}/**"])[0].metadata_list)


def test_of_runs_claiming_one_directory_at_once_exactly_one_gets_it(tmp_path):
  out = str(tmp_path / "out")
  num_runs = 8
  all_ready = threading.Barrier(num_runs)
  outcomes = []

  def claim():
    all_ready.wait()
    try:
      ownership.claim_output_dir(out, JOB, remedy="")
      outcomes.append("claimed")
    except common.UsageError as e:
      outcomes.append(str(e))

  runs = [threading.Thread(target=claim) for _ in range(num_runs)]
  for run in runs:
    run.start()
  for run in runs:
    run.join()
  assert sorted(outcomes)[-1] == "claimed" and outcomes.count("claimed") == 1
  assert all(f"{out} belongs to another run" in o for o in outcomes if o != "claimed")


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_overwrite_deletes_an_earlier_runs_output_locally_and_on_gcs(where, tmp_path, request):
  root = f"gs://{request.getfixturevalue('gcs_emulator')}" if where == "gcs" else str(tmp_path)
  out = f"{root}/out"
  ownership.claim_output_dir(out, JOB, remedy="")
  _write(f"{out}/embeddings/part-0.tfrecord")
  with pytest.raises(common.UsageError, match="belongs to another run .*; try again"):
    ownership.claim_output_dir(out, JOB, remedy="try again")

  ownership.claim_output_dir(out, JOB, remedy="", overwrite=True)
  assert _files(out) == [f"{out}/run.owner"]


@pytest.mark.parametrize(
    "prepare, problem",
    [
        (lambda out: _write(out), "is a file, not a directory"),
        (
            lambda out: _write(f"{out}/results.txt"),
            "deletes only a directory that an earlier run claimed; .* holds 1 file",
        ),
        (
            lambda out: ownership.claim_output_dir(out, {"job": "another job"}, remedy=""),
            "holds the output of another job, not of python -m pipelines.embed",
        ),
    ],
    ids=["a file", "no run claimed it", "another job's output"],
)
def test_overwrite_refuses_what_is_not_an_earlier_runs_output(prepare, problem, tmp_path):
  out = str(tmp_path / "out")
  prepare(out)
  before = _files(out) if (tmp_path / "out").is_dir() else [out]
  with pytest.raises(common.UsageError, match=problem):
    ownership.claim_output_dir(out, JOB, remedy="", overwrite=True)
  assert (_files(out) if (tmp_path / "out").is_dir() else [out]) == before


@pytest.mark.parametrize(
    "args, one_process",
    [
        (common.IN_PROCESS_RUNNER_ARGS, True),
        (common.LOCAL_RUNNER_ARGS, False),  # A worker process per core.
        (["--runner=DataflowRunner"], False),
        ([], True),
    ],
)
def test_progress_totals_are_given_only_where_one_process_counts_all(args, one_process):
  options = beam.options.pipeline_options.PipelineOptions(list(args))
  assert common.runs_in_one_process(options) == one_process


class _CountingFn(beam.DoFn):
  """Doubles each number in an `OrderedLookahead` of depth 2, counting each in a thread."""

  def start_bundle(self):
    self._lookahead = common.OrderedLookahead(self._double, 2, thread_name="test")

  def process(self, n, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
    self._lookahead.submit(n, timestamp, window)
    yield from (result for result, *_ in self._lookahead.ready(2))

  def finish_bundle(self):
    for result, _, timestamp, window in self._lookahead.ready(0):
      yield beam.transforms.window.WindowedValue(result, timestamp, (window,))
    self._lookahead.close()

  @staticmethod
  def _double(n):
    common.counter("doubled").inc()
    common.counter("sum").inc(n)
    return 2 * n


def test_a_lookahead_keeps_the_order_and_the_counters_of_its_threads():
  pipeline = beam.Pipeline(
      options=beam.options.pipeline_options.PipelineOptions(list(common.IN_PROCESS_RUNNER_ARGS))
  )
  doubled = pipeline | beam.Create(list(range(20)), reshuffle=False) | beam.ParDo(_CountingFn())
  beam.testing.util.assert_that(doubled, beam.testing.util.equal_to([2 * n for n in range(20)]))
  result = pipeline.run()
  result.wait_until_finish()
  assert common.counters(result) == {"doubled": 20, "sum": sum(range(20))}


def test_a_lookahead_works_on_several_elements_at_once_and_hands_them_back_in_order():
  lock = threading.Lock()
  running = [0]
  most_at_once = [0]
  two_at_once = threading.Event()

  def work(n):
    with lock:
      running[0] += 1
      most_at_once[0] = max(most_at_once[0], running[0])
      if running[0] == 2:
        two_at_once.set()
    two_at_once.wait(timeout=10)  # Until a second element is being worked on too.
    with lock:
      running[0] -= 1
    return n

  lookahead = common.OrderedLookahead(work, 2, thread_name="test")
  results = []
  for n in range(6):
    lookahead.submit(n, None, None)
    results += [r for r, *_ in lookahead.ready(2)]
  results += [r for r, *_ in lookahead.ready(0)]
  lookahead.close()
  assert results == list(range(6))
  assert most_at_once[0] == 2  # Two threads: two elements worked on at once.


@pytest.mark.parametrize(
    "main, argv, abbreviated",
    [
        (demo.main, ["--ou=/tmp/x"], "--ou=/tmp/x"),
        (synthetic.main, ["/tmp/x", "--class=2"], "--class=2"),
        (checkpoints.main, ["random", "--backbone=s3d", "--legacy", "/tmp/x.pkl"], "--legacy"),
    ],
)
def test_the_other_commands_refuse_an_abbreviated_flag(main, argv, abbreviated, capsys):
  with pytest.raises(SystemExit) as stopped:
    main(argv)
  assert stopped.value.code == 2
  assert f"unrecognized arguments: {abbreviated}" in capsys.readouterr().err
