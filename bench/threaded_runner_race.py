"""Beam 2.77's threaded local runner loses elements under load; flushing by size loses none.

The smallest pipeline that shows it: `Create` of N ids -> reshuffle -> a
payload of `--payload_kb` each -> reshuffle -> count, on Beam's local runner
in `--direct_running_mode=multi_threading` with 8 workers. It runs
`--runs` copies at once beside `--burners` busy loops (the losses need a
loaded machine), in two modes:

- `beam`: the runner as Beam 2.77 sets it up: each worker's output buffer
  is flushed every 1,000 ms by a timer thread, without a lock against the
  thread that writes to it (docs/reliability.md, "Threaded runners");
- `size_flush`: the same runner with that timer off
  (`worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0`, as Dataflow's SDK
  harness runs by default): buffers are flushed by size, on the writing
  thread.

One JSON line per run: elements sent, counted at the end, lost (or the
exit status of a run that ended without a count).

    .venv/bin/python bench/threaded_runner_race.py [--elements 3000 --payload_kb 300]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODES = ("beam", "size_flush")


def run_one(mode: str, elements: int, payload_bytes: int) -> dict:
  """Runs the pipeline once in this process; how many elements reached the end."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  from apache_beam.runners.portability.fn_api_runner import worker_handlers  # pylint: disable=import-outside-toplevel

  if mode == "size_flush":
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
  options = PipelineOptions(
      [
          "--runner=FnApiRunner",
          "--direct_running_mode=multi_threading",
          "--direct_num_workers=8",
      ]
  )
  with tempfile.TemporaryDirectory() as tmp:
    count_path = os.path.join(tmp, "count")
    started = time.monotonic()
    with beam.Pipeline(options=options) as pipeline:
      _ = (
          pipeline
          | beam.Create(range(elements))
          | "Spread" >> beam.Reshuffle()
          | "Payload" >> beam.Map(lambda i: (i, bytes(payload_bytes)))
          | "Shuffle" >> beam.Reshuffle()
          | "Ids" >> beam.Map(lambda kv: kv[0])
          | beam.combiners.Count.Globally()
          | beam.Map(lambda n: open(count_path, "w").write(str(n)))
      )
    with open(count_path) as f:
      received = int(f.read())
  return {
      "mode": mode,
      "sent": elements,
      "received": received,
      "lost": elements - received,
      "seconds": round(time.monotonic() - started, 1),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--elements", type=int, default=3000)
  parser.add_argument("--payload_kb", type=int, default=300)
  parser.add_argument("--runs", type=int, default=4, help="runs at once, per mode")
  parser.add_argument("--burners", type=int, default=3, help="busy loops beside them")
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(json.dumps(run_one(args.one, args.elements, args.payload_kb * 1000)), flush=True)
    return
  for mode in args.modes.split(","):
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.burners)
    ]
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                f"--one={mode}",
                f"--elements={args.elements}",
                f"--payload_kb={args.payload_kb}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(args.runs)
    ]
    try:
      for run in runs:
        printed = run.communicate()[0].strip()
        print(printed or json.dumps({"mode": mode, "exit_status": run.returncode}), flush=True)
    finally:
      for burner in burners:
        burner.kill()


if __name__ == "__main__":
  main()
