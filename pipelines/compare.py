"""Several evaluations side by side: one Markdown table and one bar chart of their metrics.

    python -m pipelines.compare EVAL_DIR [EVAL_DIR ...] [--output comparison.md]

Each EVAL_DIR is a `pipelines.linear_eval` --output_dir (local or gs://).
Every run is labelled with what its `metrics.json` says it evaluated: the
dataset, the backbone, the checkpoint's sha256 (first 12 hex digits) and
the clip settings, from the embedding job's run.json. The table holds each
run's mean over its splits of every metric any run has (a run that did not
run a protocol shows "-"), marked `*` where a split's value means little;
the chart (PNG, beside the Markdown: `comparison.png` for
`comparison.md`) shows the same numbers as grouped bars, one group per
metric, one bar per run.
"""

import sys
from collections.abc import Sequence
from typing import Any


from mmv_core.evaluation import linear_eval
from mmv_core.evaluation import report
from pipelines import common
from pipelines import run_records

PROG = "python -m pipelines.compare"


def run_label(metrics: dict[str, Any], eval_dir: str) -> str:
  """E.g. `ucf101 s3d 00830907aef7 8x64/64 s2`: what a run evaluated, from its metrics.json."""
  evaluated = metrics.get("evaluated")
  if not evaluated:  # Evaluations before metrics.json recorded what they evaluated.
    return eval_dir.rstrip("/").rsplit("/", 1)[-1]
  sha = (evaluated.get("checkpoint_sha256") or "")[:12]
  clips = (
      f"{evaluated.get('num_frames')}x{evaluated.get('crop_size')}/{evaluated.get('min_resize')} "
      f"s{evaluated.get('stride')}"
  )
  joint = "joint" if evaluated.get("joint_embeddings") else ""
  return " ".join(
      str(v) for v in (evaluated["dataset"], evaluated["backbone"], sha, clips, joint) if v
  )


def metric_columns(runs: Sequence[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
  """(column heading, metric name, key within it) of every mean metric any run has."""
  columns = []
  for name, heading in report.ACCURACY_COLUMNS.items():
    if any(name in run["mean"] for run in runs):
      columns.append((heading, name, None))
  for name, (_, key_heading) in report.PROTOCOL_TABLES.items():
    keys = sorted({k for run in runs for k in run["mean"].get(name, {})}, key=int)
    prefix = {linear_eval.KNN_TOP1: "kNN ", linear_eval.FEWSHOT_TOP1: ""}.get(name, "")
    columns += [(prefix + key_heading.format(k), name, k) for k in keys]
  return columns


def _mean_value(run: dict[str, Any], name: str, key: str | None) -> float | None:
  value = run["mean"].get(name)
  if value is not None and key is not None:
    value = value.get(key)
    if isinstance(value, dict):  # Few-shot: its mean over draws.
      value = value["mean"]
  return value


def comparison_table(labels: Sequence[str], runs: Sequence[dict[str, Any]]) -> str:
  """Markdown: one row per run, one column per metric (means over splits, in %)."""
  columns = metric_columns(runs)
  rows = [
      "| run | splits | " + " | ".join(heading for heading, _, _ in columns) + " |",
      "|---|---|" + "---|" * len(columns),
  ]
  for label, run in zip(labels, runs):
    cells = []
    for _, name, key in columns:
      value = _mean_value(run, name, key)
      mark = report.CAVEAT_MARK if name in run["mean"].get("caveats", {}) else ""
      cells.append("-" if value is None else report.percent(value) + mark)
    splits = ", ".join(str(s) for s in run["mean"]["splits"])
    rows.append(f"| {label} | {splits} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def comparison_png(labels: Sequence[str], runs: Sequence[dict[str, Any]]) -> bytes:
  """PNG: grouped bars, one group per metric, one bar per run (means over splits, in %)."""
  import io  # pylint: disable=import-outside-toplevel

  import matplotlib  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")  # No display: draws into memory.
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel

  columns = metric_columns(runs)
  width = 0.8 / len(runs)
  figure, axes = plt.subplots(figsize=(max(8.0, 0.9 * len(columns) * max(1, len(runs) / 2)), 5))
  positions = np.arange(len(columns))
  for i, (label, run) in enumerate(zip(labels, runs)):
    values = [_mean_value(run, name, key) for _, name, key in columns]
    heights = [np.nan if v is None else 100 * v for v in values]
    axes.bar(positions + (i - (len(runs) - 1) / 2) * width, heights, width, label=label)
  axes.set_xticks(positions, [heading for heading, _, _ in columns], rotation=45, ha="right")
  axes.set_ylabel("mean over splits (%)")
  axes.set_ylim(0, 100)
  axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.25))
  axes.set_title("Evaluations compared")
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  plt.close(figure)
  return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> str:
  """Writes the comparison's Markdown and PNG, prints the table; returns the Markdown."""
  parser = common.job_parser(
      PROG, __doc__.split("\n", 1)[0], "Each EVAL_DIR is a pipelines.linear_eval --output_dir."
  )
  parser.add_argument("eval_dirs", nargs="+", metavar="EVAL_DIR")
  parser.add_argument(
      "--output",
      default="comparison.md",
      help="the Markdown file; the chart goes beside it, as .png (local or gs://)",
  )
  args = parser.parse_args(argv)
  eval_dirs = [common.absolute_location(d) for d in args.eval_dirs]
  runs = [run_records.read_evaluation(d) for d in eval_dirs]
  labels = [run_label(run, d) for run, d in zip(runs, eval_dirs)]
  # Runs of the same embeddings (other protocols, C) are told apart by their
  # folder's name, then by their place on the command line.
  labels = [
      f"{label} ({d.rstrip('/').rsplit('/', 1)[-1]})" if labels.count(label) > 1 else label
      for label, d in zip(labels, eval_dirs)
  ]
  labels = [
      f"{label} #{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)
  ]
  output = common.absolute_location(args.output)
  chart = output.removesuffix(".md") + ".png"
  table = comparison_table(labels, runs)
  markdown = "\n".join(
      [
          "# Evaluations compared",
          "",
          "Means over each run's splits, in %; `*`: means little in some split (see the "
          "run's report.md). Runs, by what they evaluated (dataset, backbone, checkpoint "
          "sha256, frames x crop/resize, stride):",
          "",
          *[f"- {label}: `{d}`" for label, d in zip(labels, eval_dirs)],
          "",
          table,
          "",
          f"![evaluations compared]({chart.rsplit('/', 1)[-1]})",
          "",
      ]
  )
  report.write_bytes(output, markdown.encode())
  report.write_bytes(chart, comparison_png(labels, runs))
  print(table)
  print(f"comparison: {output}\nchart:      {chart}")
  return markdown


if __name__ == "__main__":
  common.run_main(main, PROG, sys.argv[1:])
