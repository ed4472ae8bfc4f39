"""Evaluation outputs a person reads: metrics tables (the linear probe's, and
kNN, retrieval and few-shot ones where they ran), per-class table,
confusion-matrix pictures, the Markdown report that links them, and the
summary the job prints.

The per-class outputs cover the classes evaluated (`classes`, label -> name),
which for an embedding run limited with --classes is a few of the split
lists' classes.
"""

import io
import math
from collections.abc import Mapping
from typing import Any

from apache_beam.io.filesystems import FileSystems
import numpy as np

from mmv_core.evaluation import linear_eval

METRICS_FILE = "metrics.json"
PER_CLASS_FILE = "per_class_accuracy.csv"
REPORT_FILE = "report.md"
CLASSIFIERS_DIR = "classifiers"
# The metrics table's accuracy columns: metric name -> heading, e.g.
# "test_top1" -> "test top-1".
ACCURACY_COLUMNS = {name: name.replace("_top", " top-") for name in linear_eval.ACCURACIES}
# The other protocols' metrics: name -> (table title, column heading of a key).
PROTOCOL_TABLES = {
    linear_eval.KNN_TOP1: ("kNN top-1 (cosine, majority of k)", "k={}"),
    linear_eval.RETRIEVAL_RECALL: ("Retrieval recall (test videos query training videos)", "R@{}"),
    linear_eval.FEWSHOT_TOP1: ("Few-shot linear probe top-1 (mean ± std over draws)", "{}-shot"),
}
# Every metric's name in caveat lines.
METRIC_NAMES = ACCURACY_COLUMNS | {
    linear_eval.KNN_TOP1: "kNN top-1",
    linear_eval.RETRIEVAL_RECALL: "retrieval recall",
    linear_eval.FEWSHOT_TOP1: "few-shot top-1",
}
# Follows an accuracy that means little (its split's `caveats` say why).
CAVEAT_MARK = "*"


def confusion_png_name(split: int) -> str:
  return f"confusion_split{split}.png"


def classifier_name(split: int) -> str:
  return f"{CLASSIFIERS_DIR}/split{split}.npz"


def write_bytes(path: str, data: bytes) -> None:
  """Writes a whole file to a local path or gs://."""
  with FileSystems.create(path) as f:
    f.write(data)


def strict_json(value: Any) -> Any:
  """`value` with every non-finite float (an accuracy over no videos) as None.

  JSON has no NaN; Python writes it anyway, and strict readers reject it.
  """
  if isinstance(value, dict):
    return {k: strict_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict_json(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def percent(value: float) -> str:
  return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def metrics_table(summary: dict[str, Any]) -> str:
  """Markdown table of each split's linear-probe accuracies, sizes, C and time, and the mean.

  An accuracy that means little carries `CAVEAT_MARK` (`caveat_lines` says why).
  """

  def accuracies(m):
    return " | ".join(
        percent(m[name]) + (CAVEAT_MARK if name in m["caveats"] else "")
        for name in ACCURACY_COLUMNS
    )

  rows = [
      "| split | " + " | ".join(ACCURACY_COLUMNS.values()) + " | test videos (clips) | "
      "train videos (clips) | classes | C | seconds |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for split, m in summary["splits"].items():
    rows.append(
        f"| {split} | {accuracies(m)} | {m['num_test_videos']} ({m['num_test_clips']}) | "
        f"{m['num_train_videos']} ({m['num_train_clips']}) | {m['num_classes']} | "
        f"{m['svm_c']:g} | {m['seconds']['total']:.1f} |"
    )
  rows.append(f"| mean | {accuracies(summary['mean'])} | | | | | |")
  return "\n".join(rows)


def protocol_tables(summary: dict[str, Any]) -> list[str]:
  """A titled Markdown table for each of kNN, retrieval and few-shot that ran: splits, mean.

  Values in %; each split's row marked `CAVEAT_MARK` where it means little.
  """
  tables = []
  for name, (title, heading) in PROTOCOL_TABLES.items():
    if name not in summary["mean"]:
      continue
    keys = sorted(summary["mean"][name], key=int)  # k or n; JSON keys come back sorted as text.
    rows = [
        f"{title}:",
        "",
        "| split | " + " | ".join(heading.format(k) for k in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for split, m in [*summary["splits"].items(), ("mean", summary["mean"])]:
      mark = CAVEAT_MARK if name in m["caveats"] else ""
      rows.append(f"| {split} | " + " | ".join(_value(m[name][k]) + mark for k in keys) + " |")
    tables.append("\n".join(rows))
  return tables


def _value(value: Any) -> str:
  """An accuracy in %, or a few-shot's mean ± std."""
  if isinstance(value, Mapping):
    return f"{percent(value['mean'])} ± {percent(value['std'])}"
  return percent(value)


def caveat_lines(summary: dict[str, Any]) -> list[str]:
  """Why the accuracies marked in the tables mean little, one line per metric."""
  return [
      f"{METRIC_NAMES[name]}, {reasons}" for name, reasons in summary["mean"]["caveats"].items()
  ]


def per_class_csv(
    classes: Mapping[int, str], per_split: dict[int, tuple[np.ndarray, np.ndarray]]
) -> str:
  """CSV rows `split,label,class_name,test_videos,test_top1`.

  Args:
    classes: the classes evaluated, label -> name, in label order.
    per_split: split -> (float [K] top-1 per class, int [K] test videos per
      class), indexed by label.
  """
  lines = ["split,label,class_name,test_videos,test_top1"]
  for split, (accuracies, counts) in sorted(per_split.items()):
    for label, name in classes.items():
      value = "" if math.isnan(accuracies[label]) else f"{accuracies[label]:.6f}"
      lines.append(f"{split},{label},{name},{counts[label]},{value}")
  return "\n".join(lines) + "\n"


def confusion_png(confusion: np.ndarray, classes: Mapping[int, str], title: str) -> bytes:
  """PNG of the confusion among `classes` (of an int [K, K] matrix), rows as fractions."""
  # Imported here: matplotlib's import is a quarter of a second that the
  # job's --help and input checks need not wait for.
  import matplotlib

  matplotlib.use("Agg")  # No display: draws into memory.
  from matplotlib import pyplot as plt

  labels = list(classes)
  class_names = list(classes.values())
  confusion = confusion[np.ix_(labels, labels)]
  totals = confusion.sum(axis=1, keepdims=True)
  fractions = confusion / np.maximum(totals, 1)
  size = min(24.0, max(5.0, 0.2 * len(class_names)))
  figure, axes = plt.subplots(figsize=(size, size))
  image = axes.imshow(fractions, cmap="viridis", vmin=0.0, vmax=1.0)
  ticks = np.arange(len(class_names))
  label_size = 10 if len(class_names) <= 20 else 5
  axes.set_xticks(ticks, class_names, rotation=90, fontsize=label_size)
  axes.set_yticks(ticks, class_names, fontsize=label_size)
  axes.set_xlabel("predicted class")
  axes.set_ylabel("true class")
  axes.set_title(title)
  figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=100)
  plt.close(figure)
  return buffer.getvalue()


def markdown_report(
    summary: dict[str, Any],
    classes: Mapping[int, str],
    per_split: dict[int, tuple[np.ndarray, np.ndarray]],
    input_summaries: dict[int, str],
    settings: dict[str, Any],
) -> str:
  """The report: settings, metrics and their caveats, inputs, confusion pictures, per class.

  Args:
    summary: `metrics.json`'s content.
    classes: the classes evaluated, label -> name, in label order.
    per_split: split -> (float [K] test top-1 per class, int [K] test videos),
      indexed by label.
    input_summaries: split -> what its inputs lacked (`InputCheck.summary()`).
    settings: the run's settings, shown as given.
  """
  lines = [
      f"# {_dataset_title(summary)} {_evaluation_name(summary)}",
      "",
      "Accuracies in %; docs/protocol.md defines each protocol. Linear probe: "
      "StandardScaler + LinearSVC on every training clip; a test video's score is "
      "the decision values averaged over its windows.",
      "",
  ]
  lines += (
      ["## What was evaluated", ""]
      + [f"- {k}: `{v}`" for k, v in summary.get("evaluated", {}).items()]
      + [""]
  )
  lines += ["## Settings", ""] + [f"- `{k}`: `{v}`" for k, v in settings.items()] + [""]
  lines += ["## Metrics", ""]
  if "test_top1" in summary["mean"]:
    lines += [metrics_table(summary), ""]
  for table in protocol_tables(summary):
    lines += [table, ""]
  caveats = caveat_lines(summary)
  if caveats:
    lines += [f"`{CAVEAT_MARK}` means little:", ""] + [f"- {line}" for line in caveats] + [""]
  for split, m in summary["splits"].items():
    if m.get("validation_top1"):
      sweep = ", ".join(f"C={float(c):g}: {percent(s)}" for c, s in m["validation_top1"].items())
      lines.append(f"- split {split}: C chosen {m['svm_c']:g} by held-out top-1 ({sweep})")
  lines += ["", "## Inputs", ""]
  lines += [f"- {input_summaries[int(s)]}".replace("\n", "\n- ") for s in summary["splits"]]
  lines += [""]
  splits = sorted(per_split)
  if not splits:  # No linear probe: no confusion or per-class accuracy.
    return "\n".join(lines)
  for split in splits:
    lines += [
        f"## Confusion matrix, split {split}",
        "",
        f"![confusion matrix, split {split}]({confusion_png_name(split)})",
        "",
    ]
  lines += [
      "## Per-class test top-1",
      "",
      "| label | class | " + " | ".join(f"split {s} (videos)" for s in splits) + " |",
      "|---|---|" + "---|" * len(splits),
  ]
  for label, name in classes.items():
    cells = [f"{percent(per_split[s][0][label])} ({per_split[s][1][label]})" for s in splits]
    lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _evaluation_name(summary: dict[str, Any]) -> str:
  """`linear evaluation`, or `evaluation (linear, knn, ...)` where more protocols ran."""
  protocols = summary["mean"].get("protocols", [linear_eval.LINEAR])
  if protocols == [linear_eval.LINEAR]:
    return "linear evaluation"
  return f"evaluation ({', '.join(protocols)})"


def _dataset_title(summary: dict[str, Any]) -> str:
  """The evaluated dataset's name as `metrics.json`'s settings record it (UCF101 before they did)."""
  return summary.get("settings", {}).get("dataset", "ucf101").upper()


def console_summary(summary: dict[str, Any], output_dir: str, seconds: float) -> str:
  """What the job prints at its end: the metrics tables, their caveats, outputs, wall time."""
  out = output_dir.rstrip("/")
  splits = ", ".join(summary["splits"])
  lines = [
      f"{_dataset_title(summary)} {_evaluation_name(summary)}, "
      f"split{'s' if len(summary['splits']) > 1 else ''} {splits} (accuracies in %):"
  ]
  if "test_top1" in summary["mean"]:
    lines.append(metrics_table(summary))
  lines += [f"\n{table}" for table in protocol_tables(summary)]
  caveats = caveat_lines(summary)
  if caveats:
    lines += [f"{CAVEAT_MARK} means little:"] + [f"  {line}" for line in caveats]
  outputs = f"per class: {PER_CLASS_FILE}, classifiers: {CLASSIFIERS_DIR}/"
  lines += [
      f"metrics: {out}/{METRICS_FILE}",
      f"report:  {out}/{REPORT_FILE}" + (f" ({outputs})" if "test_top1" in summary["mean"] else ""),
      f"wall time: {seconds:.1f} s",
  ]
  return "\n".join(lines)
